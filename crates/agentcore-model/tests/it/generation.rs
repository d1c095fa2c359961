//! Generation and scoring: padding and batching do not change results, the KV cache equals
//! recomputation, sampling is reproducible from the seed.

use agentcore_model::decoder::Decoder;
use agentcore_model::generate::{FinishReason, SamplingParams, generate, token_logprobs};
use candle_core::{Device, Tensor};

use crate::common::{greedy, max_abs_diff, random_sequences, rng, small_model, small_models};

fn row(t: &Tensor, r: usize, len: usize) -> Vec<f32> {
    t.get(r).and_then(|x| x.narrow(0, 0, len)).and_then(|x| x.to_vec1::<f32>()).expect("row")
}

#[test]
fn batch_of_8_scores_like_8_single_runs() {
    for (arch, model) in small_models(5) {
        batch_of_8_scores_like_8_single_runs_for(arch, &model);
    }
}

fn batch_of_8_scores_like_8_single_runs_for(arch: &str, model: &Decoder) {
    let lengths = [5, 17, 9, 2, 30, 11, 23, 8];
    let sequences = random_sequences(&lengths, 40, 6);
    let batched = token_logprobs(model, &sequences, 1.0, 0).expect("scores");
    assert_eq!(batched.dims(), &[8, 30]);
    for (i, s) in sequences.iter().enumerate() {
        let single = token_logprobs(model, std::slice::from_ref(s), 1.0, 0).expect("scores");
        let diff = max_abs_diff(&row(&batched, i, s.len()), &row(&single, 0, s.len()));
        assert!(diff < 1e-5, "{arch} sequence {i}: max diff {diff}");
        // Padding positions score 0.
        let full = batched.get(i).and_then(|x| x.to_vec1::<f32>()).expect("row");
        assert!(full[s.len()..].iter().all(|v| *v == 0.0));
        assert!(full[0] == 0.0 && full[1..s.len()].iter().all(|v| *v < 0.0));
    }
}

/// Greedy decoding by recomputing the whole sequence each step (no cache, no padding).
fn naive_greedy(model: &Decoder, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let ids = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu).expect("ids");
        let logits = model.forward_full(&ids).expect("forward");
        let last = Decoder::last_logits(&logits, 0).expect("logits");
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        seq.push(best as u32);
    }
    seq[prompt.len()..].to_vec()
}

#[test]
fn cached_left_padded_generation_equals_naive_recomputation() {
    for (arch, model) in small_models(7) {
        let prompts = random_sequences(&[3, 11, 6, 1], 40, 8);
        let out = generate(&model, &prompts, &greedy(12), &mut rng(0)).expect("generate");
        for (i, p) in prompts.iter().enumerate() {
            assert_eq!(out[i].tokens, naive_greedy(&model, p, 12), "{arch} prompt {i}");
            assert_eq!(out[i].finish_reason, FinishReason::Length);
        }
    }
}

#[test]
fn sampled_logprobs_equal_scoring_logprobs() {
    let model = small_model(9);
    let prompts = random_sequences(&[4, 9, 2], 40, 10);
    let params = SamplingParams { temperature: 0.8, top_p: 0.95, top_k: Some(20), ..greedy(10) };
    let out = generate(&model, &prompts, &params, &mut rng(1)).expect("generate");
    let full: Vec<Vec<u32>> =
        prompts.iter().zip(&out).map(|(p, g)| [p.clone(), g.tokens.clone()].concat()).collect();
    let scored = token_logprobs(&model, &full, 0.8, 0).expect("scores");
    for (i, (p, g)) in prompts.iter().zip(&out).enumerate() {
        let r = row(&scored, i, full[i].len());
        let diff = max_abs_diff(&r[p.len()..], &g.logprobs);
        assert!(diff < 1e-4, "row {i}: sampled vs scored log-probs differ by {diff}");
    }
}

#[test]
fn sampling_is_reproducible_from_the_seed() {
    let model = small_model(11);
    let prompts = random_sequences(&[5, 5, 5, 5], 40, 12);
    let params = SamplingParams { temperature: 1.0, ..greedy(16) };
    let a = generate(&model, &prompts, &params, &mut rng(42)).expect("generate");
    let b = generate(&model, &prompts, &params, &mut rng(42)).expect("generate");
    let c = generate(&model, &prompts, &params, &mut rng(43)).expect("generate");
    assert_eq!(a, b);
    assert_ne!(
        a.iter().map(|g| &g.tokens).collect::<Vec<_>>(),
        c.iter().map(|g| &g.tokens).collect::<Vec<_>>()
    );
}

#[test]
fn top_k_1_is_greedy_and_stop_sequences_stop() {
    let model = small_model(13);
    let prompts = random_sequences(&[6, 3], 40, 14);
    let greedy_out = generate(&model, &prompts, &greedy(8), &mut rng(0)).expect("generate");
    let top1 = SamplingParams { temperature: 1.3, top_k: Some(1), ..greedy(8) };
    let sampled = generate(&model, &prompts, &top1, &mut rng(5)).expect("generate");
    for (g, s) in greedy_out.iter().zip(&sampled) {
        assert_eq!(g.tokens, s.tokens);
    }
    // Stop on the third greedy token of row 0: row 0 stops there, inclusive.
    let stop = greedy_out[0].tokens[..3].to_vec();
    let params = SamplingParams { stop_sequences: vec![stop.clone()], ..greedy(8) };
    let out = generate(&model, &prompts, &params, &mut rng(0)).expect("generate");
    assert_eq!(out[0].finish_reason, FinishReason::Stop);
    assert!(out[0].tokens.ends_with(&stop) && out[0].tokens.len() <= 3);
}

#[test]
fn bad_inputs_are_refused_with_the_rule() {
    let model = small_model(15);
    let err = generate(&model, &[vec![1, 2], vec![]], &greedy(4), &mut rng(0)).unwrap_err();
    assert!(err.to_string().contains("prompts[1]"), "{err}");
    let err = generate(&model, &[vec![1, 99]], &greedy(4), &mut rng(0)).unwrap_err();
    assert!(err.to_string().contains("token ids must be < vocab_size (40), got 99"), "{err}");
    let params = SamplingParams { top_p: 0.0, ..greedy(4) };
    assert!(generate(&model, &[vec![1]], &params, &mut rng(0)).is_err());
    let err = token_logprobs(&model, &[vec![1; 65]], 1.0, 0).unwrap_err();
    assert!(err.to_string().contains("max_seq_len (64)"), "{err}");
}

/// A conversation's next turn, prefilled from the keys and values its previous turn kept,
/// generates what a fresh prefill of the whole conversation generates: rows with a cache, one
/// without, and one whose prompt departs from its cache early (only the common prefix is used).
#[test]
fn a_turn_continued_from_its_cache_generates_what_a_fresh_prefill_does() {
    use agentcore_model::generate::{SequenceCache, generate_cached};
    for (arch, model) in small_models(9) {
        let prompts = random_sequences(&[3, 11, 6, 1], 40, 10);
        let sampling = crate::common::sampled(6);
        let none = vec![None; prompts.len()];
        let (first, caches) =
            generate_cached(&model, &prompts, &none, &sampling, &mut rng(1)).expect("turn 1");
        let fresh = generate(&model, &prompts, &sampling, &mut rng(1)).expect("fresh");
        for (i, (a, b)) in first.iter().zip(&fresh).enumerate() {
            assert_eq!(a.tokens, b.tokens, "{arch} row {i}: same seed, same tokens");
            // The cache holds the prompt and every generated token that was fed back (all but
            // the last, which ended the loop).
            let mut held = prompts[i].clone();
            held.extend_from_slice(&a.tokens[..a.tokens.len() - 1]);
            assert_eq!(caches[i].ids(), held.as_slice(), "{arch} row {i}");
        }
        // The next turn: each conversation grows by its reply and an observation.
        let observations = random_sequences(&[2, 7, 1, 4], 40, 11);
        let mut next: Vec<Vec<u32>> = (0..prompts.len())
            .map(|i| [&prompts[i][..], &first[i].tokens, &observations[i]].concat())
            .collect();
        // Row 3 departs from its cache after its first token.
        next[3][1] = (next[3][1] + 1) % 40;
        let mut refs: Vec<Option<&SequenceCache>> = caches.iter().map(Some).collect();
        refs[2] = None;
        let (cached, kept) =
            generate_cached(&model, &next, &refs, &greedy(8), &mut rng(2)).expect("turn 2");
        let plain = generate(&model, &next, &greedy(8), &mut rng(2)).expect("plain");
        for (i, (a, b)) in cached.iter().zip(&plain).enumerate() {
            assert_eq!(a.tokens, b.tokens, "{arch} row {i}: continued and fresh differ");
            let diff = max_abs_diff(&a.logprobs, &b.logprobs);
            assert!(diff < 1e-4, "{arch} row {i}: log-probs differ by {diff}");
            assert!(kept[i].ids().starts_with(&next[i]), "{arch} row {i}");
        }
    }
}
