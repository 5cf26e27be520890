//! The TLS and JWT options (`--tls-*`, `--jwt-*`), resolved apart from the
//! rest of [`crate::config`] because they read files and hold secrets.

use std::sync::Arc;

use pere_core::jwt::{JwtConfig, JwtVerifier};
use pere_http::tls::ServerTls;

/// `--tls-cert` and `--tls-key`: both or neither.
pub fn tls(cert: Option<String>, key: Option<String>) -> Result<Option<Arc<ServerTls>>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => ServerTls::load(cert, key)
            .map(|tls| Some(Arc::new(tls)))
            .map_err(|e| format!("--tls-cert/--tls-key: {e}")),
        (Some(_), None) => Err("--tls-cert needs --tls-key (the certificate's private key)".into()),
        (None, Some(_)) => Err("--tls-key needs --tls-cert (the certificate chain)".into()),
    }
}

/// The JWT options as given; `None` when JWTs are off.
#[derive(Default)]
pub struct JwtArgs {
    /// `--jwt-secret`.
    pub secret: Option<String>,
    /// `--jwt-secret-file`.
    pub secret_file: Option<String>,
    /// `--jwt-public-key`.
    pub public_key: Option<String>,
    /// `--jwt-audience`.
    pub audience: Option<String>,
    /// `--jwt-issuer`.
    pub issuer: Option<String>,
}

/// Resolves and checks the JWT options: a verifier can be built from the
/// result. Messages never quote the secret.
pub fn jwt(args: JwtArgs) -> Result<Option<JwtConfig>, String> {
    let secret = match (args.secret, args.secret_file) {
        (Some(_), Some(_)) => {
            return Err(
                "--jwt-secret and --jwt-secret-file contradict each other: choose one".into(),
            );
        }
        (Some(secret), None) => Some(secret.into_bytes()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("--jwt-secret-file: cannot read `{path}`: {e}"))?;
            // A file written by `echo` ends with a newline that is no part
            // of the secret.
            Some(text.trim_end_matches(['\r', '\n']).as_bytes().to_vec())
        }
        (None, None) => None,
    };
    let public_key_pem = match args.public_key {
        None => None,
        Some(path) => Some(
            std::fs::read(&path)
                .map_err(|e| format!("--jwt-public-key: cannot read `{path}`: {e}"))?,
        ),
    };
    if secret.is_none() && public_key_pem.is_none() {
        if args.audience.is_some() || args.issuer.is_some() {
            return Err(
                "--jwt-audience and --jwt-issuer need --jwt-secret, --jwt-secret-file or --jwt-public-key"
                    .into(),
            );
        }
        return Ok(None);
    }
    let config = JwtConfig {
        secret,
        public_key_pem,
        audience: args.audience,
        issuer: args.issuer,
    };
    JwtVerifier::new(&config).map_err(|e| format!("JWT: {e}"))?;
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tls_options_come_in_pairs_and_name_bad_files() {
        assert!(tls(None, None).unwrap().is_none());
        assert!(
            tls(Some("c.pem".into()), None)
                .unwrap_err()
                .contains("--tls-key")
        );
        assert!(
            tls(None, Some("k.pem".into()))
                .unwrap_err()
                .contains("--tls-cert")
        );
        let err = tls(
            Some("/nonexistent/c.pem".into()),
            Some("/nonexistent/k.pem".into()),
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }

    #[test]
    fn jwt_options_are_checked_without_quoting_the_secret() {
        assert!(jwt(JwtArgs::default()).unwrap().is_none());
        let short = jwt(JwtArgs {
            secret: Some("tooshort".into()),
            ..JwtArgs::default()
        })
        .unwrap_err();
        assert!(!short.contains("tooshort"), "{short}");
        assert!(
            jwt(JwtArgs {
                audience: Some("pere".into()),
                ..JwtArgs::default()
            })
            .is_err()
        );
        let dir = std::env::temp_dir().join(format!("pere-jwt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "0123456789abcdef0123456789abcdef\n").unwrap();
        let config = jwt(JwtArgs {
            secret_file: Some(file.display().to_string()),
            audience: Some("pere".into()),
            ..JwtArgs::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(config.secret.unwrap().len(), 32);
        assert!(
            jwt(JwtArgs {
                secret: Some("0123456789abcdef0123456789abcdef".into()),
                secret_file: Some(file.display().to_string()),
                ..JwtArgs::default()
            })
            .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
