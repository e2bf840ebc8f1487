//! AdamW (decoupled weight decay, Loshchilov & Hutter), as `torch.optim.AdamW` computes it, with
//! its state in the open: tch's optimizer cannot save its moments, and a resumed run must continue
//! with the very moments it stopped with, or its updates differ from an uninterrupted run's.
//!
//! **Flat buffers, not one kernel per parameter.** The parameters of each weight-decay group live
//! in one flat buffer (each parameter's data is a view into it, `set_data`), and so do their
//! gradients, their moments and one scratch buffer; an update is about nine kernels per group
//! over the whole buffer, where a per-parameter loop launches eight per tensor (about 1,600 for
//! BERT-base's 200 tensors: on a GPU, launches that cost more than the arithmetic). ATen's
//! `_fused_adamw_` (one kernel) is not reachable: tch does not bind it (it takes lists of tensors
//! it mutates), and a C++ shim would need `unsafe`, which the project forbids.
//!
//! **No buffer is allocated per step.** Autograd adds each backward's gradient into the gradient
//! tensor a parameter already has (in place, outside grad mode), so once a parameter's gradient is
//! made a view into its group's flat gradient buffer ([`FlatGroup::bind_gradients`], after the
//! first backward) it stays there: clipping and the update read the flat buffer without gathering
//! it. The update's intermediate values go to the scratch buffer. A temporary the size of the
//! model costs on a CPU more than its arithmetic: the allocator maps fresh pages for it and the
//! kernel zeroes them (for BERT-base, gathering the gradients and the update's temporaries took
//! about 2.5 s of a 14 s step on 2 cores, before this).
//!
//! Weight decay applies to the parameters in [`DECAY_GROUP`] (weight matrices, embeddings), not to
//! biases and LayerNorm ([`NO_DECAY_GROUP`]), as the model declares them. Gradients are clipped to
//! a global L2 norm before the update ([`AdamW::clip_grad_norm`]).

use tch::{Kind, Tensor, nn};

use medembed_model::bert::DECAY_GROUP;

/// One trainable tensor: a view into its group's flat buffer.
#[derive(Debug)]
struct Member {
    name: String,
    param: Tensor,
    offset: i64,
    numel: i64,
}

/// The parameters of one weight-decay group, flattened into one buffer (each parameter's data is
/// a view into it), with their gradients, moments and a scratch buffer of the same layout.
#[derive(Debug)]
struct FlatGroup {
    decay: bool,
    members: Vec<Member>,
    params: Tensor,
    grads: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    scratch: Tensor,
}

impl FlatGroup {
    /// Moves `members`' data into one buffer: afterwards every parameter is a view into it, so an
    /// update of the buffer is an update of every parameter.
    fn new(decay: bool, named: Vec<(String, Tensor)>) -> Self {
        let _guard = tch::no_grad_guard();
        let mut members = Vec::with_capacity(named.len());
        let mut offset = 0;
        for (name, param) in named {
            let numel = param.numel() as i64;
            members.push(Member {
                name,
                param,
                offset,
                numel,
            });
            offset += numel;
        }
        let flat: Vec<Tensor> = members
            .iter()
            .map(|m| m.param.detach().reshape([-1]))
            .collect();
        let params = if flat.is_empty() {
            Tensor::zeros([0], (Kind::Float, tch::Device::Cpu))
        } else {
            Tensor::cat(&flat, 0)
        };
        for m in &mut members {
            let view = params
                .narrow(0, m.offset, m.numel)
                .view(m.param.size().as_slice());
            m.param.set_data(&view);
        }
        Self {
            decay,
            members,
            grads: params.zeros_like(),
            exp_avg: params.zeros_like(),
            exp_avg_sq: params.zeros_like(),
            scratch: params.zeros_like(),
            params,
        }
    }

    /// Makes every gradient autograd has created a view into `grads` (copying its values there
    /// first), so that later backward passes add into the flat buffer. Parameters without a
    /// gradient (not used by the loss) keep zeros in their part of the buffer.
    fn bind_gradients(&self) {
        let _guard = tch::no_grad_guard();
        for m in &self.members {
            let mut grad = m.param.grad();
            if !grad.defined() {
                continue;
            }
            let mut view = self
                .grads
                .narrow(0, m.offset, m.numel)
                .view(m.param.size().as_slice());
            if grad.data_ptr() != view.data_ptr() {
                view.copy_(&grad);
                grad.set_data(&view);
            }
        }
    }
}

/// AdamW over every trainable variable of a var store, in two flat groups.
#[derive(Debug)]
pub struct AdamW {
    groups: Vec<FlatGroup>,
    /// Updates done (the bias corrections' t).
    pub steps: i64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// An optimizer over every trainable variable of `vs`, torch's defaults otherwise
    /// (betas 0.9/0.999, eps 1e-8). The variables' data moves into the optimizer's flat buffers
    /// (they stay the same tensors to everything holding them).
    pub fn new(vs: &nn::VarStore, weight_decay: f64) -> Self {
        let variables = vs.variables_.lock().expect("var store lock");
        let mut named: Vec<(String, Tensor, bool)> = variables
            .named_variables
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, t)| {
                let group = variables
                    .trainable_variables
                    .iter()
                    .find(|v| v.tensor.data_ptr() == t.data_ptr())
                    .map_or(DECAY_GROUP, |v| v.group);
                (name.clone(), t.shallow_clone(), group == DECAY_GROUP)
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let groups = [true, false]
            .into_iter()
            .map(|decay| {
                let members = named
                    .iter()
                    .filter(|(_, _, d)| *d == decay)
                    .map(|(n, t, _)| (n.clone(), t.shallow_clone()))
                    .collect();
                FlatGroup::new(decay, members)
            })
            .collect();
        Self {
            groups,
            steps: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Sets every gradient to zero (one fill per group, once the gradients are bound).
    pub fn zero_grad(&mut self) {
        let _guard = tch::no_grad_guard();
        for group in &mut self.groups {
            group.bind_gradients();
            let _ = group.grads.zero_();
        }
    }

    /// The global L2 norm of the gradients; if it is above `max_norm`, every gradient is scaled
    /// down so that it equals `max_norm` (as `clip_grad_norm_`). Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let mut squares = 0.0;
        for group in &self.groups {
            group.bind_gradients();
            squares += group.grads.norm().double_value(&[]).powi(2);
        }
        let total = squares.sqrt();
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for group in &mut self.groups {
                let _ = group.grads.g_mul_scalar_(coef);
            }
        }
        total
    }

    /// One update with learning rate `lr`: a handful of kernels per group over its flat buffers,
    /// however many parameters the model has, and no allocation.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let bias1 = 1.0 - self.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - self.beta2.powi(self.steps as i32);
        let step_size = lr / bias1;
        let bias2_sqrt = bias2.sqrt();
        for group in &mut self.groups {
            group.bind_gradients();
            let grad = &group.grads;
            if group.decay && self.weight_decay > 0.0 {
                let _ = group.params.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = group.exp_avg.lerp_(grad, 1.0 - self.beta1);
            let _ = group.exp_avg_sq.g_mul_scalar_(self.beta2);
            let _ = grad.mul_scalar_out(&group.scratch, 1.0 - self.beta2);
            let _ = group.exp_avg_sq.addcmul_(grad, &group.scratch);
            if step_size == 0.0 {
                continue; // a learning rate of 0 (warmup's first step) moves nothing
            }
            // params -= step_size · m / (√v / √bias2 + eps), with the scalar folded into the
            // denominator so that no buffer beyond the scratch one is needed.
            let _ = group.exp_avg_sq.sqrt_out(&group.scratch);
            let _ = group
                .scratch
                .g_div_scalar_(bias2_sqrt)
                .g_add_scalar_(self.eps)
                .g_div_scalar_(-step_size);
            let _ = group.params.addcdiv_(&group.exp_avg, &group.scratch);
        }
    }

    /// The moments by name (`exp_avg.{param}`, `exp_avg_sq.{param}`), on the CPU, for a
    /// checkpoint; `steps` is saved beside them.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let cpu = |flat: &Tensor, m: &Member| {
            flat.narrow(0, m.offset, m.numel)
                .view(m.param.size().as_slice())
                .detach()
                .to_device(tch::Device::Cpu)
                .contiguous()
        };
        let mut state: Vec<(String, Tensor)> = self
            .groups
            .iter()
            .flat_map(|g| {
                g.members.iter().flat_map(|m| {
                    [
                        (format!("exp_avg.{}", m.name), cpu(&g.exp_avg, m)),
                        (format!("exp_avg_sq.{}", m.name), cpu(&g.exp_avg_sq, m)),
                    ]
                })
            })
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        state
    }

    /// Restores moments saved by [`Self::state`]; every parameter's moments must be there.
    pub fn load_state(&mut self, state: &[(String, Tensor)], steps: i64) -> Result<(), String> {
        let by_name: std::collections::HashMap<&str, &Tensor> =
            state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let _guard = tch::no_grad_guard();
        for group in &mut self.groups {
            for m in &group.members {
                for (prefix, flat) in [
                    ("exp_avg", &group.exp_avg),
                    ("exp_avg_sq", &group.exp_avg_sq),
                ] {
                    let name = format!("{prefix}.{}", m.name);
                    let saved = by_name
                        .get(name.as_str())
                        .ok_or_else(|| format!("optimizer state has no {name:?}"))?;
                    if saved.size() != m.param.size() {
                        return Err(format!("optimizer state {name:?} has the wrong shape"));
                    }
                    flat.narrow(0, m.offset, m.numel)
                        .copy_(&saved.reshape([-1]).to_device(flat.device()));
                }
            }
        }
        self.steps = steps;
        Ok(())
    }
}
