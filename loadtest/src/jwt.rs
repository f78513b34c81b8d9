//! An end-user token issuer for tests: RS256, ES256 and EdDSA keys generated for the run
//! (none is committed), their JWKS, and tokens with whatever claims a test needs.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// One signing key and its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    key: EncodingKey,
    pub jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// An issuer with one key per accepted algorithm.
#[derive(Debug)]
pub struct Issuer {
    pub iss: String,
    pub keys: Vec<SigningKey>,
}

impl Issuer {
    /// Keys for RS256 (from `openssl`, which rcgen cannot generate RSA without), ES256 and
    /// EdDSA.
    pub fn new(iss: &str) -> Result<Issuer> {
        Ok(Issuer {
            iss: iss.into(),
            keys: vec![rsa("rs")?, ec("es")?, ed("ed")?],
        })
    }

    /// The JWKS a provider of this issuer trusts.
    pub fn jwks(&self) -> String {
        json!({"keys": self.keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
    }

    /// A token signed with the key for `alg`, valid for an hour, with `iss`, `sub`,
    /// `aud` and `extra` claims.
    pub fn token(&self, alg: Algorithm, sub: &str, aud: &str, extra: Value) -> String {
        let now = now();
        let mut claims =
            json!({"iss": self.iss, "sub": sub, "aud": aud, "iat": now, "exp": now + 3600});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                c.insert(k.clone(), v.clone());
            }
        }
        self.sign(alg, &claims)
    }

    /// Signs `claims` as they are (for expired or otherwise odd tokens).
    pub fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let k = self
            .keys
            .iter()
            .find(|k| k.alg == alg)
            .expect("a key for every accepted algorithm");
        let mut header = Header::new(alg);
        header.kid = Some(k.kid.clone());
        jsonwebtoken::encode(&header, claims, &k.key).expect("the token signs")
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn rsa(kid: &str) -> Result<SigningKey> {
    let dir = std::env::temp_dir().join(format!("weir-jwt-{}-{kid}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pem = dir.join("key.pem");
    let der = dir.join("key.der");
    let run = |args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .context("openssl (Debian package openssl) is needed for RSA test keys")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.stdout)
    };
    let pem_s = pem.to_str().context("path")?;
    let der_s = der.to_str().context("path")?;
    run(&["genrsa", "-traditional", "-out", pem_s, "2048"])?;
    run(&[
        "rsa",
        "-in",
        pem_s,
        "-traditional",
        "-outform",
        "DER",
        "-out",
        der_s,
    ])?;
    let modulus = run(&["rsa", "-in", pem_s, "-noout", "-modulus"])?;
    let hex = String::from_utf8(modulus)?
        .trim()
        .strip_prefix("Modulus=")
        .context("openssl -modulus output")?
        .to_string();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<Result<_, _>>()?;
    let key = EncodingKey::from_rsa_der(&std::fs::read(&der)?);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SigningKey {
        kid: kid.into(),
        alg: Algorithm::RS256,
        key,
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": B64.encode(n), "e": "AQAB"}),
    })
}

fn ec(kid: &str) -> Result<SigningKey> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    // The raw public key is the uncompressed point: 0x04, then x and y.
    let raw = pair.public_key_raw();
    let (x, y) = raw[1..].split_at(32);
    Ok(SigningKey {
        kid: kid.into(),
        alg: Algorithm::ES256,
        key: EncodingKey::from_ec_der(&pair.serialize_der()),
        jwk: json!({"kty": "EC", "kid": kid, "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y)}),
    })
}

fn ed(kid: &str) -> Result<SigningKey> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    Ok(SigningKey {
        kid: kid.into(),
        alg: Algorithm::EdDSA,
        key: EncodingKey::from_ed_der(&pair.serialize_der()),
        jwk: json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": B64.encode(pair.public_key_raw())}),
    })
}
