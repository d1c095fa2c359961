//! Bearer JWTs: HS256 with a shared secret, or RS256 with a public key (PEM). `exp` is
//! required; `nbf`, `iss` and `aud` are checked when present / configured; `alg: none` and
//! any algorithm other than the configured one are refused. Permissions come from a
//! `permissions` array or a space-separated `scope`; the organisation from `org`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Every permission of the contract.
pub const ALL_PERMISSIONS: [&str; 8] = [
    "training:start",
    "training:view",
    "training:cancel",
    "training:evaluate",
    "data:export",
    "training:deploy",
    "agents:manage",
    "agents:invoke",
];

/// How tokens are checked.
#[derive(Debug, Clone)]
pub enum AuthKey {
    /// HS256 shared secret.
    Hs256(Vec<u8>),
    /// RS256 public key, PEM.
    Rs256Pem(Vec<u8>),
}

/// Token checking settings.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The key.
    pub key: AuthKey,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

/// The claims we read and write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The caller.
    pub sub: String,
    /// Its organisation.
    #[serde(default)]
    pub org: Option<String>,
    /// Permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    /// Permissions as an OAuth scope string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub`.
    pub subject: String,
    /// `org` (required and non-empty).
    pub org: String,
    /// Granted permissions.
    pub permissions: Vec<String>,
}

impl Caller {
    /// Whether the caller holds `permission`.
    #[must_use]
    pub fn can(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission || p == "*")
    }
}

/// Checks tokens (and, with an HS256 secret, issues them).
pub struct Auth {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    algorithm: Algorithm,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Auth").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Auth {
    /// From settings.
    ///
    /// # Errors
    /// A PEM that does not parse as an RSA public key.
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let (decoding, encoding, algorithm) = match &config.key {
            AuthKey::Hs256(secret) => (
                DecodingKey::from_secret(secret),
                Some(EncodingKey::from_secret(secret)),
                Algorithm::HS256,
            ),
            AuthKey::Rs256Pem(pem) => (
                DecodingKey::from_rsa_pem(pem).map_err(|e| format!("RS256 public key: {e}"))?,
                None,
                Algorithm::RS256,
            ),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 5;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &config.issuer {
            validation.set_issuer(&[i]);
        }
        Ok(Self {
            decoding,
            encoding,
            algorithm,
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
        })
    }

    /// Checks a token; the error says why it is refused (never echoing the token).
    ///
    /// # Errors
    /// Bad signature, expired, not yet valid, wrong issuer or audience, `alg: none`, malformed.
    pub fn verify(&self, token: &str) -> Result<Caller, String> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| format!("invalid token: {e}"))?;
        let c = data.claims;
        let permissions = match (c.permissions, c.scope) {
            (Some(p), _) => p,
            (None, Some(s)) => s.split_whitespace().map(str::to_owned).collect(),
            (None, None) => Vec::new(),
        };
        // Every object belongs to an organisation: a token that names none is refused rather than
        // given the organisation named like its subject (which another tenant may be).
        let org = c.org.filter(|o| !o.trim().is_empty()).ok_or_else(|| {
            "invalid token: the `org` claim (a non-empty organisation) is required".to_owned()
        })?;
        Ok(Caller { subject: c.sub, org, permissions })
    }

    /// A token for `subject` in `org` with `permissions`, valid for `ttl_s` seconds (HS256 only;
    /// `None` with an RS256 public key, which cannot sign).
    #[must_use]
    pub fn issue(
        &self,
        subject: &str,
        org: &str,
        permissions: &[&str],
        ttl_s: u64,
    ) -> Option<String> {
        let key = self.encoding.as_ref()?;
        let claims = Claims {
            sub: subject.to_owned(),
            org: Some(org.to_owned()),
            permissions: Some(permissions.iter().map(|p| (*p).to_owned()).collect()),
            scope: None,
            exp: now() + ttl_s,
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(secret: &str, aud: Option<&str>) -> Auth {
        Auth::new(&AuthConfig {
            key: AuthKey::Hs256(secret.as_bytes().to_vec()),
            issuer: None,
            audience: aud.map(str::to_owned),
        })
        .unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_carry_permissions() {
        let a = hs("s3cret", Some("agentcore"));
        let t = a.issue("alice", "acme", &["training:view"], 60).unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!(
            c,
            Caller {
                subject: "alice".into(),
                org: "acme".into(),
                permissions: vec!["training:view".into()]
            }
        );
        assert!(c.can("training:view") && !c.can("training:start"));
    }

    /// Issue 14, finding 8: a token with no `org` (or an empty one) used to read the organisation
    /// named like its subject.
    #[test]
    fn a_token_without_an_organisation_is_refused() {
        let a = hs("s3cret", Some("agentcore"));
        let key = EncodingKey::from_secret(b"s3cret");
        for org in [None, Some(String::new()), Some("  ".to_owned())] {
            let claims = Claims {
                sub: "acme".into(),
                org: org.clone(),
                permissions: Some(vec!["training:view".into()]),
                scope: None,
                exp: now() + 60,
                nbf: None,
                iss: None,
                aud: Some("agentcore".into()),
            };
            let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap();
            let e = a.verify(&t).unwrap_err();
            assert!(e.contains("`org` claim"), "{org:?}: {e}");
        }
    }

    #[test]
    fn refuses_other_secrets_audiences_none_and_garbage() {
        let a = hs("s3cret", Some("agentcore"));
        let other = hs("other", Some("agentcore")).issue("x", "o", &[], 60).unwrap();
        assert!(a.verify(&other).unwrap_err().contains("InvalidSignature"));
        let wrong_aud = hs("s3cret", Some("elsewhere")).issue("x", "o", &[], 60).unwrap();
        assert!(a.verify(&wrong_aud).unwrap_err().contains("InvalidAudience"));
        // alg: none, with a valid-looking payload.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(
                r#"{{"sub":"x","exp":{},"aud":"agentcore","permissions":["training:start"]}}"#,
                now() + 60
            ))
        );
        assert!(a.verify(&none).is_err());
        assert!(a.verify("not-a-token").is_err());
    }

    #[test]
    fn rs256_tokens_verify_with_the_public_key_and_hs256_confusion_is_refused() {
        let private = include_bytes!("../tests/fixtures/rs256-test-private.pem");
        let public = include_bytes!("../tests/fixtures/rs256-test-public.pem");
        let a = Auth::new(&AuthConfig {
            key: AuthKey::Rs256Pem(public.to_vec()),
            issuer: Some("idp".into()),
            audience: None,
        })
        .unwrap();
        assert!(a.issue("x", "o", &[], 60).is_none(), "a public key cannot sign");
        let claims = Claims {
            sub: "carol".into(),
            org: Some("acme".into()),
            permissions: None,
            scope: Some("training:view data:export".into()),
            exp: now() + 60,
            nbf: None,
            iss: Some("idp".into()),
            aud: None,
        };
        let key = EncodingKey::from_rsa_pem(private).unwrap();
        let t = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key).unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!(c.permissions, vec!["training:view".to_string(), "data:export".to_string()]);
        // Wrong issuer.
        let other = Claims { iss: Some("elsewhere".into()), ..claims.clone() };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &other, &key).unwrap();
        assert!(a.verify(&t).unwrap_err().contains("InvalidIssuer"));
        // The public key used as an HS256 secret (algorithm confusion).
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(public),
        )
        .unwrap();
        assert!(a.verify(&forged).is_err());
    }
}
