//! Training mechanics, fast: a tiny BERT with random weights (2 layers, 32 wide, the real MiniLM
//! tokenizer) trained with AdamW on 16 real positive pairs from the seed data. With each loss the
//! training loss must fall, and the weights must change; in eval mode the same inputs give the same
//! embeddings (dropout off).

use medembed_model::SentenceEncoder;
use medembed_model::testing::write_tiny_random_model;
use medembed_trainer::loss::{contrastive, cosine_mse, mnrl};
use tch::nn::OptimizerConfig;
use tch::{Device, Tensor, nn};

fn seed_pairs() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/seed_positives_16.csv"
    );
    csv::Reader::from_path(path)
        .expect("fixture")
        .records()
        .map(|r| {
            let r = r.expect("row");
            (r[0].to_string(), r[1].to_string())
        })
        .collect()
}

fn tiny_encoder(dir: &std::path::Path) -> SentenceEncoder {
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR")
        .expect("MEDEMBED_TEST_MODEL_DIR (run deploy/dev/deps)");
    write_tiny_random_model(dir, std::path::Path::new(&minilm), 32, 2, 7).expect("tiny model");
    SentenceEncoder::load(dir, Device::Cpu).expect("tiny model loads")
}

/// Trains `steps` AdamW steps with `loss` on the 16 anchors and their partners: the first
/// `positives` are their real positives, the rest another anchor's positive (label 0). Returns
/// (first loss, mean of the last three).
fn train(loss: &dyn Fn(&Tensor, &Tensor) -> Tensor, positives: usize, steps: usize) -> (f64, f64) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let encoder = tiny_encoder(tmp.path());
    let pairs = seed_pairs();
    let a: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let b: Vec<&str> = (0..pairs.len())
        .map(|i| {
            if i < positives {
                pairs[i].1.as_str()
            } else {
                pairs[(i + 1) % pairs.len()].1.as_str()
            }
        })
        .collect();
    let ids_a = encoder.tokenize(&a).expect("tokenize");
    let ids_b = encoder.tokenize(&b).expect("tokenize");
    let batch_a: Vec<&[i64]> = ids_a.iter().map(Vec::as_slice).collect();
    let batch_b: Vec<&[i64]> = ids_b.iter().map(Vec::as_slice).collect();
    let mut optimizer = nn::AdamW::default()
        .build(&encoder.vs, 1e-3)
        .expect("optimizer");
    let before = encoder.encode(&a[..1]).expect("encode");
    let mut losses = Vec::new();
    for _ in 0..steps {
        let value = loss(
            &encoder.forward(&batch_a, true),
            &encoder.forward(&batch_b, true),
        );
        optimizer.backward_step(&value);
        losses.push(value.double_value(&[]));
    }
    let after = encoder.encode(&a[..1]).expect("encode");
    assert_ne!(before, after, "training changed the model");
    assert_eq!(
        after,
        encoder.encode(&a[..1]).expect("encode"),
        "eval mode is deterministic"
    );
    let tail: f64 = losses[steps - 3..].iter().sum::<f64>() / 3.0;
    (losses[0], tail)
}

#[test]
fn mnrl_training_lowers_the_loss() {
    let (first, last) = train(&|a, b| mnrl(a, b, None, 20.0, false), 16, 40);
    println!("mnrl: {first:.4} -> {last:.4}");
    // From about ln 16 (a random model cannot tell the 16 positives apart).
    assert!(first > 2.0 && last < first * 0.8, "mnrl {first} -> {last}");
}

#[test]
fn cosine_and_contrastive_training_lower_the_loss() {
    // 8 positives, 8 negatives: a random model scores them all alike.
    let labels: Vec<f32> = (0..16).map(|i| if i < 8 { 1.0 } else { 0.0 }).collect();
    let labels = Tensor::from_slice(&labels);
    let (first, last) = train(&|a, b| cosine_mse(a, b, &labels), 8, 25);
    println!("cosine: {first:.4} -> {last:.4}");
    assert!(last < first * 0.8, "cosine {first} -> {last}");
    let (first, last) = train(&|a, b| contrastive(a, b, &labels, 0.5), 8, 25);
    println!("contrastive: {first:.4} -> {last:.4}");
    assert!(last < first * 0.8, "contrastive {first} -> {last}");
}

#[test]
fn adamw_matches_libtorch_and_spares_biases_and_layer_norms() {
    use medembed_model::bert::{DECAY_GROUP, NO_DECAY_GROUP};
    use medembed_trainer::adamw::AdamW;
    let tmp = tempfile::tempdir().expect("tempdir");
    // Two copies of the same model folder: one stepped by libtorch's AdamW, one by ours. (Loaded
    // from one folder: writing random weights twice draws from libtorch's global generator,
    // which the other tests of this binary draw from too.)
    let theirs = tiny_encoder(&tmp.path().join("a"));
    let ours = SentenceEncoder::load(&tmp.path().join("a"), Device::Cpu).expect("loads");
    let mut reference = nn::AdamW::default()
        .build(&theirs.vs, 1e-2)
        .expect("optimizer");
    reference.set_weight_decay_group(DECAY_GROUP, 0.1);
    reference.set_weight_decay_group(NO_DECAY_GROUP, 0.0);
    let mut optimizer = AdamW::new(&ours.vs, 0.1);
    let pairs = seed_pairs();
    let a: Vec<&str> = pairs.iter().map(|p| p.0.as_str()).collect();
    let b: Vec<&str> = pairs.iter().map(|p| p.1.as_str()).collect();
    let (ids_a, ids_b) = (
        ours.tokenize(&a).expect("ids"),
        ours.tokenize(&b).expect("ids"),
    );
    let batch_a: Vec<&[i64]> = ids_a.iter().map(Vec::as_slice).collect();
    let batch_b: Vec<&[i64]> = ids_b.iter().map(Vec::as_slice).collect();
    // Eval mode (no dropout), so both see the same gradients.
    let loss = |e: &SentenceEncoder| {
        mnrl(
            &e.forward(&batch_a, false),
            &e.forward(&batch_b, false),
            None,
            20.0,
            false,
        )
    };
    for _ in 0..3 {
        reference.backward_step(&loss(&theirs));
        optimizer.zero_grad();
        loss(&ours).backward();
        optimizer.step(1e-2);
    }
    let expected = theirs.vs.variables();
    for (name, tensor) in ours.vs.variables() {
        // The attention key bias shifts every score of a query alike, which softmax cancels: its
        // true gradient is 0, and Adam scales the float noise it gets up to full steps.
        if name.ends_with("key.bias") {
            continue;
        }
        let diff = (&tensor - &expected[&name]).abs().max().double_value(&[]);
        assert!(
            diff < 1e-5,
            "{name} differs from libtorch's AdamW by {diff:e}"
        );
    }

    // Clipping sees the gradients autograd wrote (they live in the optimizer's flat buffers after
    // the first step) and scales the parameters' own gradients.
    let grad_norm = |e: &SentenceEncoder| {
        e.vs.trainable_variables()
            .iter()
            .map(|v| v.grad().square().sum(tch::Kind::Double).double_value(&[]))
            .sum::<f64>()
            .sqrt()
    };
    optimizer.zero_grad();
    assert_eq!(grad_norm(&ours), 0.0, "zero_grad clears every gradient");
    loss(&ours).backward();
    let norm = grad_norm(&ours);
    assert!(norm > 0.0);
    let reported = optimizer.clip_grad_norm(norm / 2.0);
    assert!(
        (reported - norm).abs() < 1e-4 * norm,
        "clip reports {reported}, the gradients' norm is {norm}"
    );
    let clipped = grad_norm(&ours);
    assert!(
        (clipped - norm / 2.0).abs() < 1e-4 * norm,
        "clipped to {clipped}, asked {}",
        norm / 2.0
    );

    // A loss with zero gradient everywhere: only weight decay moves anything.
    let fresh = tiny_encoder(&tmp.path().join("c"));
    let before: Vec<(String, Tensor)> = fresh
        .vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let mut optimizer = AdamW::new(&fresh.vs, 0.5);
    let ids = fresh.tokenize(&["tumour"]).expect("tokenize");
    optimizer.zero_grad();
    (fresh.forward(&[ids[0].as_slice()], false) * 0.0)
        .sum(tch::Kind::Float)
        .backward();
    optimizer.step(0.1);
    let after = fresh.vs.variables();
    let (mut decayed, mut spared) = (0, 0);
    for (name, old) in &before {
        let new = &after[name];
        let no_decay = name.ends_with(".bias") || name.contains("LayerNorm");
        if no_decay {
            assert!(new.equal(old), "{name} must not decay");
            spared += 1;
        } else {
            // Decoupled decay: w <- w * (1 - lr * wd) = 0.95 w.
            let expected = old * 0.95;
            assert!(new.allclose(&expected, 1e-5, 1e-7, false), "{name} decays");
            decayed += 1;
        }
    }
    assert!(
        decayed > 10 && spared > 10,
        "{decayed} decayed, {spared} spared"
    );

    // The moments survive a save and load.
    let state = optimizer.state();
    let mut restored = AdamW::new(&fresh.vs, 0.5);
    restored
        .load_state(&state, optimizer.steps)
        .expect("state loads");
    assert_eq!(restored.steps, 1);
    assert!(
        restored.load_state(&state[1..], 1).is_err(),
        "a missing moment is refused"
    );
}
