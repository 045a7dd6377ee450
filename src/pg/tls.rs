//! The rustls client configuration for each `sslmode`, as libpq means them.
//!
//! `prefer` and `require` encrypt without checking the certificate (libpq does the same when
//! no root certificate is given): they protect against a passive listener, not against an
//! impostor. `verify-ca` checks the chain against `sslrootcert`; `verify-full` also checks
//! that the certificate was issued for the host name. Whether a plain connection is allowed
//! is decided by the caller (`connect.rs`), never here: this module only builds the config.

use super::error::PgError;
use super::uri::{PgUri, SslMode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector for `uri.sslmode`; `Config` errors for a missing or unreadable root
/// certificate, which no retry would fix.
pub fn connector(uri: &PgUri) -> Result<MakeRustlsConnect, PgError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Config(format!("TLS set-up failed: {e}")))?;
    let verifier: Arc<dyn ServerCertVerifier> = match uri.sslmode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(Unchecked { provider: provider.clone() })
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = root_store(uri)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| PgError::Config(format!("TLS set-up failed: {e}")))?;
            Arc::new(Chained { webpki, check_name: uri.sslmode == SslMode::VerifyFull })
        }
    };
    let config =
        builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// `sslrootcert`, or libpq's default `~/.postgresql/root.crt`.
fn root_store(uri: &PgUri) -> Result<RootCertStore, PgError> {
    let path = match &uri.sslrootcert {
        Some(path) => path.clone(),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".postgresql/root.crt")
        }
    };
    let shown = path.display();
    let mode = uri.sslmode.as_str();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| PgError::Config(format!("sslmode={mode} needs sslrootcert: {shown}: {e}")))?;
    let mut roots = RootCertStore::empty();
    for cert in certs {
        let cert = cert.map_err(|e| PgError::Config(format!("{shown}: {e}")))?;
        roots.add(cert).map_err(|e| PgError::Config(format!("{shown}: {e}")))?;
    }
    if roots.is_empty() {
        return Err(PgError::Config(format!("{shown} holds no certificate")));
    }
    Ok(roots)
}

/// `prefer`/`require`: any certificate, but the handshake's signatures are still verified,
/// so the session is encrypted to whoever holds the certificate's key.
#[derive(Debug)]
struct Unchecked {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`/`verify-full`: webpki's verification; `verify-ca` forgives only a name that
/// does not match.
#[derive(Debug)]
struct Chained {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Chained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}
