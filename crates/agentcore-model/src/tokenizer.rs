//! Tokenizers: the built-in byte-level one of the embedded default ([`ByteTokenizer`]), and
//! Hugging Face ones (`tokenizer.json`, or built from a GGUF file's metadata) behind one type,
//! [`TextTokenizer`], which is what the agent loop sees.
//!
//! The byte tokenizer:
//! Ids 0..=255 are the bytes of UTF-8 text, so any text round-trips. The agent transcript tags
//! (`<call>`, `</call>`, `<out>`, `</out>`, `<ans>`, `</ans>`) and the control tokens (`<pad>`,
//! `<bos>`, `<eos>`) are single special tokens above 255: the model learns one token per tag,
//! and tool output between `<out>` and `</out>` is easy to mask out of the loss.
//!
//! ```
//! use agentcore_model::tokenizer::{ByteTokenizer, SpecialToken};
//! let tok = ByteTokenizer::new();
//! let ids = tok.encode("2+3<call>");
//! assert_eq!(ids, vec![b'2' as u32, b'+' as u32, b'3' as u32, tok.special(SpecialToken::CallStart)]);
//! assert_eq!(tok.decode(&ids), "2+3<call>");
//! ```

/// The special tokens, in id order after the 256 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialToken {
    /// Padding (never attended to, never in the loss).
    Pad,
    /// Beginning of a sequence.
    Bos,
    /// End of a sequence.
    Eos,
    /// `<call>`: the model starts a tool call.
    CallStart,
    /// `</call>`.
    CallEnd,
    /// `<out>`: tool output starts (written by the environment, masked out of the loss).
    OutStart,
    /// `</out>`.
    OutEnd,
    /// `<ans>`: the final answer starts.
    AnswerStart,
    /// `</ans>`.
    AnswerEnd,
}

impl SpecialToken {
    /// Every special token, in id order.
    pub const ALL: [SpecialToken; 9] = [
        Self::Pad,
        Self::Bos,
        Self::Eos,
        Self::CallStart,
        Self::CallEnd,
        Self::OutStart,
        Self::OutEnd,
        Self::AnswerStart,
        Self::AnswerEnd,
    ];

    /// The text form.
    pub fn text(self) -> &'static str {
        match self {
            Self::Pad => "<pad>",
            Self::Bos => "<bos>",
            Self::Eos => "<eos>",
            Self::CallStart => "<call>",
            Self::CallEnd => "</call>",
            Self::OutStart => "<out>",
            Self::OutEnd => "</out>",
            Self::AnswerStart => "<ans>",
            Self::AnswerEnd => "</ans>",
        }
    }
}

/// Byte-level tokenizer with the special tokens above.
#[derive(Debug, Clone, Default)]
pub struct ByteTokenizer;

/// Number of byte ids.
const BYTES: u32 = 256;

impl ByteTokenizer {
    /// The tokenizer.
    pub fn new() -> Self {
        Self
    }

    /// Vocabulary size: 256 bytes + the special tokens.
    pub fn vocab_size(&self) -> usize {
        BYTES as usize + SpecialToken::ALL.len()
    }

    /// The id of a special token.
    pub fn special(&self, token: SpecialToken) -> u32 {
        BYTES + SpecialToken::ALL.iter().position(|t| *t == token).expect("listed") as u32
    }

    /// The special token with this id, if it is one.
    pub fn special_of(&self, id: u32) -> Option<SpecialToken> {
        id.checked_sub(BYTES).and_then(|i| SpecialToken::ALL.get(i as usize).copied())
    }

    /// Encodes text; the special tokens' text forms become their single ids.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len());
        let mut rest = text;
        while !rest.is_empty() {
            if rest.starts_with('<')
                && let Some(token) = SpecialToken::ALL.iter().find(|t| rest.starts_with(t.text()))
            {
                ids.push(self.special(*token));
                rest = &rest[token.text().len()..];
                continue;
            }
            let ch = rest.chars().next().expect("non-empty");
            let mut buf = [0u8; 4];
            ids.extend(ch.encode_utf8(&mut buf).bytes().map(u32::from));
            rest = &rest[ch.len_utf8()..];
        }
        ids
    }

    /// Decodes ids to text (invalid UTF-8 becomes U+FFFD; unknown ids are skipped).
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        let mut bytes = Vec::new();
        let flush = |bytes: &mut Vec<u8>, out: &mut String| {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        };
        for &id in ids {
            if id < BYTES {
                bytes.push(id as u8);
            } else if let Some(token) = self.special_of(id) {
                flush(&mut bytes, &mut out);
                out.push_str(token.text());
            }
        }
        flush(&mut bytes, &mut out);
        out
    }
}

/// A tokenizer of any kind the engine loads.
#[derive(Clone)]
pub enum TextTokenizer {
    /// The built-in byte tokenizer.
    Byte(ByteTokenizer),
    /// A Hugging Face tokenizer (`tokenizer.json`, or converted from GGUF metadata).
    Hf(Box<tokenizers::Tokenizer>),
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Byte(_) => f.write_str("TextTokenizer::Byte"),
            Self::Hf(t) => write!(f, "TextTokenizer::Hf({} tokens)", t.get_vocab_size(true)),
        }
    }
}

impl TextTokenizer {
    /// Encodes text. Special tokens written in the text (`<start_of_turn>`, `<call>`) become
    /// their ids; no BOS is added (chat templates write it themselves).
    pub fn encode(&self, text: &str) -> crate::Result<Vec<u32>> {
        match self {
            Self::Byte(t) => Ok(t.encode(text)),
            Self::Hf(t) => Ok(t
                .encode(text, false)
                .map_err(|e| crate::ModelError::invalid("text to encode", e.to_string(), text))?
                .get_ids()
                .to_vec()),
        }
    }

    /// Decodes ids to text, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> crate::Result<String> {
        match self {
            Self::Byte(t) => Ok(t.decode(ids)),
            Self::Hf(t) => t
                .decode(ids, false)
                .map_err(|e| crate::ModelError::invalid("ids to decode", e.to_string(), ids.len())),
        }
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Byte(t) => t.vocab_size(),
            Self::Hf(t) => t.get_vocab_size(true),
        }
    }

    /// The id of a token given by its text form (`<eos>`, `<end_of_turn>`), if it is one token.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        match self {
            Self::Byte(t) => SpecialToken::ALL
                .iter()
                .find(|s| s.text() == token)
                .map(|s| t.special(*s))
                .or_else(|| (token.len() == 1).then(|| u32::from(token.as_bytes()[0]))),
            Self::Hf(t) => t.token_to_id(token),
        }
    }
}

/// Builds a Hugging Face tokenizer from the metadata of a GGUF file whose
/// `tokenizer.ggml.model` is `llama` (SentencePiece BPE, as in Gemma and Llama 2): merges by
/// the pieces' scores with byte fallback, spaces written as `▁`, and the control and
/// user-defined tokens (token types 3 and 4) as special tokens so they encode as one id.
/// `gpt2` (byte-level BPE) models go through candle's converter.
pub fn tokenizer_from_gguf(
    content: &candle_core::quantized::gguf_file::Content,
    source: &str,
) -> crate::Result<tokenizers::Tokenizer> {
    use candle_core::quantized::gguf_file::Value;
    use tokenizers::decoders::DecoderWrapper;
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::normalizers::{Prepend, Replace};
    let err = |message: String| crate::ModelError::File { path: source.to_string(), message };
    let get = |key: &str| content.metadata.get(key);
    let kind = get("tokenizer.ggml.model")
        .and_then(|v| v.to_string().ok())
        .ok_or_else(|| err("missing `tokenizer.ggml.model`".into()))?
        .clone();
    if kind == "gpt2" {
        use candle_core::quantized::tokenizer::TokenizerFromGguf;
        return tokenizers::Tokenizer::from_gguf(content).map_err(|e| err(e.to_string()));
    }
    if kind != "llama" {
        return Err(err(format!(
            "tokenizer model `{kind}` is not supported (supported: llama, gpt2)"
        )));
    }
    let array = |key: &str| -> crate::Result<&Vec<Value>> {
        get(key).and_then(|v| v.to_vec().ok()).ok_or_else(|| err(format!("missing array `{key}`")))
    };
    let tokens: Vec<String> = array("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| err(e.to_string())))
        .collect::<crate::Result<_>>()?;
    let scores: Vec<f64> = array("tokenizer.ggml.scores")?
        .iter()
        .map(|v| v.to_f32().map(f64::from).map_err(|e| err(e.to_string())))
        .collect::<crate::Result<_>>()?;
    let types: Vec<i64> = match array("tokenizer.ggml.token_type") {
        Ok(a) => a.iter().map(|v| v.to_i32().map(i64::from).unwrap_or(1)).collect(),
        Err(_) => vec![1; tokens.len()],
    };
    if scores.len() != tokens.len() {
        return Err(err(format!("{} scores for {} tokens", scores.len(), tokens.len())));
    }
    let id_of = |key: &str| get(key).and_then(|v| v.to_u32().ok());
    let unk = id_of("tokenizer.ggml.unknown_token_id").map(|i| i as usize);
    // SentencePiece BPE (what llama.cpp's `llama` tokenizer runs): repeatedly merge the adjacent
    // pair whose merged piece has the highest score. As a BPE model: every split of a piece into
    // two pieces of the vocabulary is a merge, ranked by the merged piece's score (the way
    // Hugging Face converts SentencePiece BPE models). Scoring the pieces as a Unigram model
    // instead segments text into fragments the model never saw in training.
    let normal = |i: usize| !matches!(types.get(i), Some(3 | 4 | 6));
    let index: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| normal(*i))
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut ranked: Vec<(f64, usize, String, String)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate().filter(|(i, _)| normal(*i)) {
        for (k, _) in piece.char_indices().skip(1) {
            let (a, b) = piece.split_at(k);
            if index.contains_key(a) && index.contains_key(b) {
                ranked.push((scores[i], i, a.to_owned(), b.to_owned()));
            }
        }
    }
    ranked.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    let merges: Vec<(String, String)> = ranked.into_iter().map(|(_, _, a, b)| (a, b)).collect();
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let mut builder =
        tokenizers::models::bpe::BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if let Some(u) = unk.and_then(|u| tokens.get(u)) {
        builder = builder.unk_token(u.clone()).fuse_unk(true);
    }
    let model = builder.build().map_err(|e| err(e.to_string()))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    let add_space_prefix =
        get("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()).unwrap_or(true);
    let replace = Replace::new(" ", "\u{2581}").map_err(|e| err(e.to_string()))?;
    let normalizer: tokenizers::NormalizerWrapper = if add_space_prefix {
        tokenizers::normalizers::Sequence::new(vec![
            Prepend::new("\u{2581}".into()).into(),
            replace.into(),
        ])
        .into()
    } else {
        replace.into()
    };
    tokenizer.with_normalizer(Some(normalizer)).map_err(|e| err(e.to_string()))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("\u{2581}", " ").map_err(|e| err(e.to_string()))?.into(),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(Sequence::new(decoders)));
    let specials: Vec<tokenizers::AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| matches!(t, 3 | 4))
        .map(|(tok, _)| tokenizers::AddedToken::from(tok.clone(), true))
        .collect();
    tokenizer.add_special_tokens(specials).map_err(|e| err(e.to_string()))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_text_with_tags_and_unicode() {
        let tok = ByteTokenizer::new();
        let text =
            "Sort [3,1,2] <call>sorted([3,1,2])</call><out>[1, 2, 3]</out><ans>[1,2,3]</ans> é<x";
        let ids = tok.encode(text);
        assert_eq!(tok.decode(&ids), text);
        assert_eq!(ids.iter().filter(|&&i| i >= 256).count(), 6, "six tags, six tokens");
        assert_eq!(tok.vocab_size(), 265);
        assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
    }

    #[test]
    fn special_ids_are_distinct_and_invertible() {
        let tok = ByteTokenizer::new();
        for t in SpecialToken::ALL {
            assert_eq!(tok.special_of(tok.special(t)), Some(t));
        }
        assert_eq!(tok.special_of(65), None);
    }
}
