//! The built-in byte-level tokenizer of the embedded default.
//!
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
