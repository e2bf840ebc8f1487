//! Older hub checkpoints (BiomedBERT among them) ship `pytorch_model.bin`, torch's pickled
//! state dict, instead of `model.safetensors`. A real one (made by torch.save, see the fixture's
//! PROVENANCE.md) loads to the same embeddings as its safetensors twin, and exporting keeps the
//! tensors the encoder does not use (the pooler), so Hugging Face finds every weight.

use std::path::Path;

use medembed_model::SentenceEncoder;
use medembed_model::encoder::read_weights;
use tch::Device;

fn folder(dir: &Path, weights: &str, as_name: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-pickle");
    let minilm = std::env::var("MEDEMBED_TEST_MODEL_DIR").expect("MEDEMBED_TEST_MODEL_DIR");
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::copy(fixture.join("config.json"), dir.join("config.json")).expect("config");
    std::fs::copy(fixture.join(weights), dir.join(as_name)).expect("weights");
    for file in ["tokenizer.json", "vocab.txt", "tokenizer_config.json"] {
        std::fs::copy(Path::new(&minilm).join(file), dir.join(file)).expect("tokenizer");
    }
}

#[test]
fn pytorch_model_bin_loads_like_its_safetensors_twin() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (pickle, safetensors) = (tmp.path().join("pickle"), tmp.path().join("safetensors"));
    folder(&pickle, "pytorch_model.bin", "pytorch_model.bin");
    folder(&safetensors, "model.safetensors.twin", "model.safetensors");
    let texts = [
        "Tumour-infiltrating lymphocytes predict response to PD-1 blockade.",
        "aspirin",
    ];
    let a = SentenceEncoder::load(&pickle, Device::Cpu).expect("pytorch_model.bin loads");
    let b = SentenceEncoder::load(&safetensors, Device::Cpu).expect("safetensors loads");
    assert_eq!(
        a.encode(&texts).expect("encode"),
        b.encode(&texts).expect("encode")
    );

    let out = tmp.path().join("exported");
    a.save(&out).expect("export");
    let (_, tensors) = read_weights(&out).expect("exported weights");
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"pooler.dense.weight"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("bert.")));
    let c = SentenceEncoder::load(&out, Device::Cpu).expect("exported folder loads");
    assert_eq!(
        c.encode(&texts).expect("encode"),
        a.encode(&texts).expect("encode")
    );

    std::fs::remove_file(pickle.join("pytorch_model.bin")).expect("rm");
    let err = SentenceEncoder::load(&pickle, Device::Cpu).expect_err("no weights");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}
