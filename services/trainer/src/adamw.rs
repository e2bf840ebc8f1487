//! AdamW (decoupled weight decay, Loshchilov & Hutter), as `torch.optim.AdamW` computes it, with
//! its state in the open: tch's optimizer cannot save its moments, and a resumed run must continue
//! with the very moments it stopped with, or its updates differ from an uninterrupted run's.
//!
//! Weight decay applies to the parameters in [`DECAY_GROUP`] (weight matrices, embeddings), not to
//! biases and LayerNorm ([`NO_DECAY_GROUP`]), as the model declares them. Gradients are clipped to
//! a global L2 norm before the update ([`AdamW::clip_grad_norm`]).

use tch::{Kind, Tensor, nn};

use medembed_model::bert::DECAY_GROUP;

/// One trainable tensor and its moments.
#[derive(Debug)]
struct Slot {
    name: String,
    param: Tensor,
    decay: bool,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

#[derive(Debug)]
pub struct AdamW {
    slots: Vec<Slot>,
    /// Updates done (the bias corrections' t).
    pub steps: i64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    /// An optimizer over every trainable variable of `vs`, torch's defaults otherwise
    /// (betas 0.9/0.999, eps 1e-8).
    pub fn new(vs: &nn::VarStore, weight_decay: f64) -> Self {
        let variables = vs.variables_.lock().expect("var store lock");
        let mut slots: Vec<Slot> = variables
            .named_variables
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .map(|(name, t)| {
                let group = variables
                    .trainable_variables
                    .iter()
                    .find(|v| v.tensor.data_ptr() == t.data_ptr())
                    .map_or(DECAY_GROUP, |v| v.group);
                Slot {
                    name: name.clone(),
                    param: t.shallow_clone(),
                    decay: group == DECAY_GROUP,
                    exp_avg: t.zeros_like(),
                    exp_avg_sq: t.zeros_like(),
                }
            })
            .collect();
        slots.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            slots,
            steps: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    pub fn zero_grad(&mut self) {
        for slot in &mut self.slots {
            let mut grad = slot.param.grad();
            if grad.defined() {
                let _ = grad.detach_().zero_();
            }
        }
    }

    /// The global L2 norm of the gradients; if it is above `max_norm`, every gradient is scaled
    /// down so that it equals `max_norm` (as `clip_grad_norm_`). Returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> f64 {
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = self
            .slots
            .iter()
            .map(|s| s.param.grad())
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
            .collect();
        let total = Tensor::stack(&norms, 0)
            .sum(Kind::Float)
            .sqrt()
            .double_value(&[]);
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for mut g in grads {
                let _ = g.g_mul_scalar_(coef);
            }
        }
        total
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let bias1 = 1.0 - self.beta1.powi(self.steps as i32);
        let bias2 = 1.0 - self.beta2.powi(self.steps as i32);
        let step_size = lr / bias1;
        let bias2_sqrt = bias2.sqrt();
        for slot in &mut self.slots {
            let grad = slot.param.grad();
            if !grad.defined() {
                continue;
            }
            if slot.decay && self.weight_decay > 0.0 {
                let _ = slot.param.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = slot.exp_avg.lerp_(&grad, 1.0 - self.beta1);
            let _ = slot.exp_avg_sq.g_mul_scalar_(self.beta2);
            let _ = slot
                .exp_avg_sq
                .g_add_(&(&grad * &grad * (1.0 - self.beta2)));
            let denom = slot.exp_avg_sq.sqrt() / bias2_sqrt + self.eps;
            let _ = slot.param.g_sub_(&(&slot.exp_avg / denom * step_size));
        }
    }

    /// The moments by name (`exp_avg.{param}`, `exp_avg_sq.{param}`), on the CPU, for a
    /// checkpoint; `steps` is saved beside them.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let cpu = |t: &Tensor| t.detach().to_device(tch::Device::Cpu).contiguous();
        self.slots
            .iter()
            .flat_map(|s| {
                [
                    (format!("exp_avg.{}", s.name), cpu(&s.exp_avg)),
                    (format!("exp_avg_sq.{}", s.name), cpu(&s.exp_avg_sq)),
                ]
            })
            .collect()
    }

    /// Restores moments saved by [`Self::state`]; every parameter's moments must be there.
    pub fn load_state(&mut self, state: &[(String, Tensor)], steps: i64) -> Result<(), String> {
        let by_name: std::collections::HashMap<&str, &Tensor> =
            state.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let _guard = tch::no_grad_guard();
        for slot in &mut self.slots {
            for (prefix, target) in [
                ("exp_avg", &mut slot.exp_avg),
                ("exp_avg_sq", &mut slot.exp_avg_sq),
            ] {
                let name = format!("{prefix}.{}", slot.name);
                let saved = by_name
                    .get(name.as_str())
                    .ok_or_else(|| format!("optimizer state has no {name:?}"))?;
                if saved.size() != target.size() {
                    return Err(format!("optimizer state {name:?} has the wrong shape"));
                }
                target.copy_(&saved.to_device(target.device()));
            }
        }
        self.steps = steps;
        Ok(())
    }
}
