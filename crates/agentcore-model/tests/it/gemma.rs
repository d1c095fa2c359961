//! Gemma 3 270M from its GGUF file: the tokenizer from the metadata, our forward pass against
//! candle-transformers' `quantized_gemma3`, and greedy continuations.
//!
//! candle-transformers' reference gates its MLP with SiLU, where Gemma 3 uses GELU-tanh
//! (huggingface/candle#3745, open): the differential test runs our decoder with the activation
//! switched to SiLU so both compute the same function; the model as loaded (GELU-tanh, as in
//! transformers and llama.cpp) is checked on what it says.

use std::collections::HashMap;

use agentcore_model::decoder::{Activation, Decoder, DecoderConfig};
use agentcore_model::generate::generate;
use agentcore_model::hub::{ChatMessage, LoadedModel, load_gguf};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_gemma3::ModelWeights;

use crate::common::{assert_every_param_has_gradient, gemma_gguf, greedy, max_abs_diff};

const PROMPTS: [&str; 3] =
    ["The capital of France is", "def fibonacci(n):\n", "Monday, Tuesday, Wednesday,"];
const NEW_TOKENS: usize = 10;

fn encode_with_bos(loaded: &LoadedModel, text: &str) -> Vec<u32> {
    let mut ids = vec![loaded.tokenizer.token_id("<bos>").expect("bos")];
    ids.extend(loaded.tokenizer.encode(text).expect("encode"));
    ids
}

/// Greedy decoding with the reference model (batch 1, its own KV cache).
fn reference_greedy(
    reference: &mut ModelWeights,
    prompt: &[u32],
    n: usize,
) -> (Vec<f32>, Vec<u32>) {
    let device = Device::Cpu;
    let input = Tensor::new(prompt, &device).and_then(|t| t.unsqueeze(0)).expect("input");
    let logits = reference.forward(&input, 0).expect("forward");
    let first_logits = logits.squeeze(0).and_then(|l| l.to_vec1::<f32>()).expect("logits");
    let mut out = Vec::new();
    let mut last = &first_logits;
    let mut step_logits;
    for i in 0..n {
        let next = argmax(last);
        out.push(next);
        if i + 1 == n {
            break;
        }
        let input = Tensor::new(&[next], &device).and_then(|t| t.unsqueeze(0)).expect("input");
        step_logits = reference
            .forward(&input, prompt.len() + i)
            .and_then(|l| l.squeeze(0))
            .and_then(|l| l.to_vec1::<f32>())
            .expect("forward");
        last = &step_logits;
    }
    (first_logits, out)
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best }) as u32
}

#[test]
fn gemma3_tokenizer_from_gguf_metadata() {
    let Some(path) = gemma_gguf() else { return };
    let loaded = load_gguf(&path, false, &Device::Cpu).expect("load");
    let tok = &loaded.tokenizer;
    assert_eq!(tok.vocab_size(), 262_144);
    // Gemma 3's control tokens, each a single id.
    for (text, id) in
        [("<pad>", 0), ("<eos>", 1), ("<bos>", 2), ("<start_of_turn>", 105), ("<end_of_turn>", 106)]
    {
        assert_eq!(tok.token_id(text), Some(id), "{text}");
    }
    let text = "Hello, world! 3 + 4 = 7.\n  Indented 日本語 ✓";
    let ids = tok.encode(text).expect("encode");
    assert!(ids.len() < text.len(), "subword tokens, not bytes: {ids:?}");
    assert_eq!(tok.decode(&ids).expect("decode"), text);
    assert_eq!(tok.encode("<start_of_turn>user").expect("encode")[0], 105);
    // The ids llama.cpp gives (llama-cpp-python 0.3, `Llama.tokenize(text, add_bos=False)`):
    // SentencePiece BPE merges by score. A Unigram reading of the same scores splits " quick"
    // into fragments, and the model then writes garbled text.
    let text = "The quick brown fox jumps over the lazy dog near the river bank. \nQuestion: What \
                is the capital of France?\nAnswer:";
    assert_eq!(
        tok.encode(text).expect("encode"),
        [
            818, 3823, 8864, 37423, 38167, 1024, 506, 31770, 4799, 3541, 506, 8858, 4856, 236761,
            236743, 107, 14977, 236787, 2900, 563, 506, 5279, 529, 7001, 236881, 107, 7925, 236787
        ]
    );
    assert_eq!(loaded.stop_token_ids, vec![1, 106]);

    let template = loaded.chat_template.as_ref().expect("template");
    let rendered = template
        .render(
            &[
                ChatMessage { role: "system".into(), content: "Be brief.".into() },
                ChatMessage { role: "user".into(), content: "Hi".into() },
            ],
            true,
            None,
        )
        .expect("render");
    assert_eq!(
        rendered,
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    );
}

/// The differential test runs in a child process of this test binary with
/// `CANDLE_DEQUANTIZE_ALL=1`, which makes the reference multiply by the dequantized f32 weights
/// (candle reads it once per thread; setting it here would race with other tests). Without it
/// the reference also quantizes the activations to 8 bits, and logits differ by up to ~0.9.
#[test]
fn gemma3_forward_matches_candle_quantized_gemma3() {
    if gemma_gguf().is_none() {
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "gemma::gemma3_differential_in_child",
            "--include-ignored",
            "--nocapture",
        ])
        .env("CANDLE_DEQUANTIZE_ALL", "1")
        .status()
        .expect("run child");
    assert!(status.success(), "differential test failed: {status}");
}

#[test]
#[ignore = "run by gemma3_forward_matches_candle_quantized_gemma3 with CANDLE_DEQUANTIZE_ALL=1"]
fn gemma3_differential_in_child() {
    assert_eq!(
        std::env::var("CANDLE_DEQUANTIZE_ALL").as_deref(),
        Ok("1"),
        "run via the parent test"
    );
    let Some(path) = gemma_gguf() else { return };
    let device = Device::Cpu;
    let loaded = load_gguf(&path, false, &device).expect("load");
    let mut file = std::fs::File::open(&path).expect("open");
    let content = gguf_file::Content::read(&mut file).expect("gguf");
    let mut reference = ModelWeights::from_gguf(content, &mut file, &device).expect("reference");

    let silu_config =
        DecoderConfig { activation: Activation::Silu, ..loaded.model.config().clone() };
    let weights: HashMap<String, Tensor> =
        loaded.model.weights().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let silu =
        Decoder::from_weights(silu_config, weights, false, "gemma (silu)", &device).expect("model");

    for prompt in PROMPTS {
        let ids = encode_with_bos(&loaded, prompt);
        let (ref_logits, ref_tokens) = reference_greedy(&mut reference, &ids, NEW_TOKENS);
        let input =
            Tensor::new(ids.as_slice(), &device).and_then(|t| t.unsqueeze(0)).expect("input");
        let ours =
            Decoder::last_logits(&silu.forward_full(&input).expect("forward"), 0).expect("row");
        let diff = max_abs_diff(&ours, &ref_logits);
        let scale = ref_logits.iter().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("{prompt:?}: max |logit diff| {diff:.4} (max |logit| {scale:.1})");
        // Same f32 weights, same function; the sums run in a different order.
        assert!(diff < 1e-3, "{prompt:?}: logits differ by {diff}");
        let ours_tokens = generate(
            &silu,
            std::slice::from_ref(&ids),
            &greedy(NEW_TOKENS),
            &mut crate::common::rng(0),
        )
        .expect("generate")
        .remove(0)
        .tokens;
        assert_eq!(ours_tokens, ref_tokens, "{prompt:?}: greedy continuations differ");
        eprintln!("  silu: {:?}", loaded.tokenizer.decode(&ours_tokens).expect("decode"));
    }

    // The model as loaded (GELU-tanh, Gemma 3's real activation) continues the week in order,
    // where the SiLU variant above skips to Friday; and writes the base case of the recursion.
    let ids: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode_with_bos(&loaded, p)).collect();
    let out = generate(&loaded.model, &ids, &greedy(NEW_TOKENS), &mut crate::common::rng(0))
        .expect("generate");
    let texts: Vec<String> =
        out.iter().map(|g| loaded.tokenizer.decode(&g.tokens).expect("decode")).collect();
    eprintln!("gelu: {texts:?}");
    assert!(texts[1].contains("if n == 0:"), "{:?}", texts[1]);
    assert!(texts[2].contains("Thursday"), "{:?}", texts[2]);
}

#[test]
fn gemma3_quantized_decoding_picks_the_f32_models_tokens() {
    let Some(path) = gemma_gguf() else { return };
    let device = Device::Cpu;
    let loaded = load_gguf(&path, false, &device).expect("load");
    // Decoding runs on the quantized twins of the matrices (Q8_0 / Q4_K / Q6_K); the same
    // model on its f32 weights alone picks the same greedy tokens.
    let weights: HashMap<String, Tensor> =
        loaded.model.weights().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let dense =
        Decoder::from_weights(loaded.model.config().clone(), weights, false, "f32", &device)
            .expect("model");
    let ids: Vec<Vec<u32>> = PROMPTS.iter().map(|p| encode_with_bos(&loaded, p)).collect();
    let quantized =
        generate(&loaded.model, &ids, &greedy(NEW_TOKENS), &mut crate::common::rng(0)).expect("q");
    let f32_only =
        generate(&dense, &ids, &greedy(NEW_TOKENS), &mut crate::common::rng(0)).expect("f32");
    for (q, d) in quantized.iter().zip(&f32_only) {
        assert_eq!(q.tokens, d.tokens, "quantized and f32 decoding differ");
    }
}

#[test]
fn gemma3_lora_trains_through_the_real_model() {
    use agentcore_model::decoder::LoraConfig;
    use agentcore_model::generate::token_logprobs;
    use agentcore_model::optim::{AdamW, AdamWConfig};
    let Some(path) = gemma_gguf() else { return };
    let device = Device::Cpu;
    let mut loaded = load_gguf(&path, false, &device).expect("load");
    let lora = LoraConfig {
        r: 2,
        lora_alpha: 4.0,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    };
    loaded.model.enable_lora(&lora, &mut crate::common::rng(1)).expect("lora");
    assert_eq!(loaded.model.params().len(), 18 * 2 * 2);
    // Teach it an unlikely continuation.
    let seq = encode_with_bos(&loaded, "The capital of France is Zanzibar Zanzibar");
    let nll = |m: &Decoder| {
        let logp = token_logprobs(m, std::slice::from_ref(&seq), 1.0, 0).expect("scores");
        (logp.sum_all().expect("sum").neg().expect("neg") / (seq.len() - 1) as f64).expect("mean")
    };
    let mut opt = AdamW::new(
        loaded.model.params(),
        AdamWConfig { learning_rate: 1e-2, ..AdamWConfig::default() },
    )
    .expect("opt");
    let mut losses = Vec::new();
    for step in 0..4 {
        let loss = nll(&loaded.model);
        losses.push(loss.to_scalar::<f32>().expect("scalar"));
        let grads = loss.backward().expect("backward");
        if step == 1 {
            assert_every_param_has_gradient(&loaded.model, &grads, "gemma3 lora");
        }
        opt.step(&grads).expect("step");
    }
    assert!(losses[3] < losses[0] - 0.5, "LoRA on Gemma 3 lowers the loss: {losses:?}");
}
