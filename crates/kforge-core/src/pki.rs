//! Certificates and keys kforge issues (rcgen on aws-lc-rs).
//!
//! kforge owns the cluster's PKI: it creates the CAs, issues every leaf it needs from
//! a [`CertRequest`], and stores the results in the secrets bundle so re-rendering
//! never churns a certificate. A leaf is re-issued only when its request's
//! [fingerprint](CertRequest::fingerprint) changes (subject, SANs, usage, issuer, key
//! type) or it enters the renewal window. Validity is always explicit: rcgen's
//! default `not_after` would be the year 4096.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::hashing::sha256_hex;
use crate::random::random_bytes;
use crate::spec::KeyAlgorithm;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate operation failed for {what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
    #[error("stored certificate {what} cannot be parsed; the secrets bundle may be damaged")]
    Parse { what: String },
}

/// A certificate and its private key, PEM-encoded, as stored in the bundle.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertAndKey {
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for CertAndKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey").field("cert", &self.cert).field("key", &"<redacted>").finish()
    }
}

/// A leaf in the bundle: what was asked for (fingerprint) and what was issued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCert {
    pub fingerprint: String,
    #[serde(flatten)]
    pub pair: CertAndKey,
}

/// Which way a leaf is used (drives Extended Key Usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    ServerAndClient,
}

/// kforge's CAs. Their bundle keys are also K3s's file names under `server/tls/`
/// (`etcd/server-ca` → `server/tls/etcd/server-ca.crt`), so K3s takes them as custom CAs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ca {
    /// Signs serving certificates (API server, kubelets).
    Server,
    /// Signs client certificates: users, components, kubelets, the API server's kubelet client.
    Client,
    /// The aggregation layer's front proxy (`--requestheader-client-ca-file`).
    RequestHeader,
    /// etcd's serving certificates and its clients.
    EtcdServer,
    /// etcd members among themselves.
    EtcdPeer,
}

impl Ca {
    pub const ALL: [Ca; 5] = [Ca::Server, Ca::Client, Ca::RequestHeader, Ca::EtcdServer, Ca::EtcdPeer];

    /// The bundle key (and K3s's file name).
    pub const fn id(self) -> &'static str {
        match self {
            Ca::Server => "server-ca",
            Ca::Client => "client-ca",
            Ca::RequestHeader => "request-header-ca",
            Ca::EtcdServer => "etcd/server-ca",
            Ca::EtcdPeer => "etcd/peer-ca",
        }
    }
}

impl std::fmt::Display for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// Everything that defines a leaf certificate; its fingerprint decides re-issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// Bundle key, e.g. `admin` or `apiserver/cp-1`.
    pub id: String,
    /// The issuing CA.
    pub issuer: Ca,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub usage: Usage,
}

impl CertRequest {
    /// The cluster admin's client certificate (O=system:masters), in both distributions.
    pub fn admin(id: &str) -> CertRequest {
        CertRequest {
            id: id.into(),
            issuer: Ca::Client,
            common_name: "admin".into(),
            organizations: vec!["system:masters".into()],
            dns_names: vec![],
            ip_addresses: vec![],
            usage: Usage::Client,
        }
    }

    /// Stable digest of the request, the issuing CA and the key algorithm.
    pub fn fingerprint(&self, ca: &CertAndKey, algorithm: KeyAlgorithm) -> String {
        let mut text = format!(
            "cn={}\no={}\ndns={}\nip={}\nusage={:?}\nalg={algorithm}\nca=",
            self.common_name,
            self.organizations.join(","),
            self.dns_names.join(","),
            self.ip_addresses.iter().map(|ip| ip.to_string()).collect::<Vec<_>>().join(","),
            self.usage,
        );
        text.push_str(&sha256_hex(ca.cert.as_bytes()));
        sha256_hex(text.as_bytes())
    }
}

/// A fresh private key of the chosen algorithm.
pub fn generate_key(algorithm: KeyAlgorithm) -> Result<KeyPair, PkiError> {
    let result = match algorithm {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048),
        KeyAlgorithm::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096),
    };
    result.map_err(|source| PkiError::Rcgen { what: format!("a {algorithm} key"), source })
}

/// A self-signed CA valid for `days` from `now`.
pub fn new_ca(
    common_name: &str,
    algorithm: KeyAlgorithm,
    days: u32,
    now: OffsetDateTime,
) -> Result<CertAndKey, PkiError> {
    let err = |source| PkiError::Rcgen { what: format!("CA {common_name}"), source };
    let key = generate_key(algorithm)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(common_name, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    set_validity(&mut params, now, days);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(CertAndKey { cert: cert.pem(), key: key.serialize_pem() })
}

/// A CA loaded once for issuing many leaves.
pub struct LoadedCa {
    issuer: Issuer<'static, KeyPair>,
    pub pair: CertAndKey,
}

impl LoadedCa {
    pub fn load(id: &str, pair: &CertAndKey) -> Result<LoadedCa, PkiError> {
        let err = |source| PkiError::Rcgen { what: format!("CA {id}"), source };
        let key = KeyPair::from_pem(&pair.key).map_err(err)?;
        let issuer = Issuer::from_ca_cert_pem(&pair.cert, key).map_err(err)?;
        Ok(LoadedCa { issuer, pair: pair.clone() })
    }

    /// Issue a leaf for `req`, valid for `days` from `now`.
    pub fn issue(
        &self,
        req: &CertRequest,
        algorithm: KeyAlgorithm,
        days: u32,
        now: OffsetDateTime,
    ) -> Result<IssuedCert, PkiError> {
        let err = |source| PkiError::Rcgen { what: format!("certificate {}", req.id), source };
        let key = generate_key(algorithm)?;
        let mut params = CertificateParams::default();
        let orgs: Vec<&str> = req.organizations.iter().map(String::as_str).collect();
        params.distinguished_name = dn(&req.common_name, &orgs);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = match req.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        };
        for name in &req.dns_names {
            params.subject_alt_names.push(SanType::DnsName(name.clone().try_into().map_err(err)?));
        }
        for ip in &req.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now, days);
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(IssuedCert {
            fingerprint: req.fingerprint(&self.pair, algorithm),
            pair: CertAndKey { cert: cert.pem(), key: key.serialize_pem() },
        })
    }
}

/// The public half of a PEM private key, as a PEM `PUBLIC KEY` (SubjectPublicKeyInfo).
pub fn public_key_pem(private_pem: &str) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(private_pem).map_err(|source| PkiError::Rcgen { what: "a key".into(), source })?;
    Ok(key.public_key_pem())
}

/// The private key as one file that kube-apiserver reads as both its service-account
/// signing key and its verifying keys (K3s's `server/tls/service.key`, passed to
/// `--service-account-signing-key-file` and `--service-account-key-file`). client-go's
/// public-key reader takes an RSA key in PKCS#1 or PKCS#8 but an EC key only in SEC1
/// form (`BEGIN EC PRIVATE KEY`): given the PKCS#8 form the bundle stores, the real
/// kube-apiserver exits with "data does not contain any valid RSA or ECDSA public
/// keys". EC keys are rewritten to SEC1; RSA keys stay as they are.
pub fn signing_and_verifying_key_pem(private_pem: &str) -> Result<String, PkiError> {
    use p256::pkcs8::DecodePrivateKey;
    use sec1::der::{Decode, Encode};
    let Ok(key) = p256::SecretKey::from_pkcs8_pem(private_pem) else {
        return Ok(private_pem.to_string());
    };
    let damaged = || PkiError::Parse { what: "the service-account key".into() };
    // The curve must be named in the key ([0] parameters): Go's x509.ParseECPrivateKey,
    // which client-go and OpenSSL's readers follow, cannot use a SEC1 key without it,
    // and the p256 crate writes none.
    let der = key.to_sec1_der().map_err(|_| damaged())?;
    let mut sec1 = sec1::EcPrivateKey::from_der(&der).map_err(|_| damaged())?;
    sec1.parameters = Some(sec1::EcParameters::NamedCurve(PRIME256V1));
    let der = sec1.to_der().map_err(|_| damaged())?;
    Ok(pem_block("EC PRIVATE KEY", &der))
}

/// The named curve P-256 (prime256v1, secp256r1).
const PRIME256V1: sec1::der::asn1::ObjectIdentifier =
    sec1::der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// A PEM block: base64 in 64-character lines between BEGIN and END.
fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// When the certificate in `pem` stops being valid.
pub fn not_after(pem: &str) -> Option<OffsetDateTime> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// How the API server names a client certificate it authenticated
/// (`authentication.kubernetes.io/credential-id`): `X509SHA256=` and the hex SHA-256 of
/// the certificate's DER. An admission policy can deny exactly this certificate.
pub fn credential_id(pem: &str) -> Option<String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    Some(format!("X509SHA256={}", sha256_hex(&block.contents)))
}

/// What `kforge certs check` shows of a certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    #[serde(skip)]
    pub not_after: OffsetDateTime,
    /// `not_after` as an operator reads it (UTC).
    pub expires: String,
}

pub fn summary(pem: &str) -> Option<CertSummary> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = block.parse_x509().ok()?;
    let cn = |name: &x509_parser::x509::X509Name<'_>| {
        name.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or("").to_string()
    };
    Some(CertSummary {
        subject: cn(cert.subject()),
        issuer: cn(cert.issuer()),
        serial: cert.raw_serial().iter().map(|b| format!("{b:02X}")).collect(),
        not_after: cert.validity().not_after.to_datetime(),
        expires: {
            let t = cert.validity().not_after.to_datetime();
            format!("{} {:02}:{:02} UTC", t.date(), t.hour(), t.minute())
        },
    })
}

fn dn(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, now: OffsetDateTime, days: u32) {
    // Backdate a little so a host whose clock runs slightly behind accepts it.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days as i64);
    let mut serial: [u8; 16] = random_bytes();
    serial[0] &= 0x7f; // positive INTEGER
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CertRequest {
        CertRequest::admin("admin")
    }

    #[test]
    fn issued_leaf_has_explicit_validity_and_fingerprint() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca("test-ca", KeyAlgorithm::EcdsaP256, 3650, now).unwrap();
        let loaded = LoadedCa::load("test-ca", &ca).unwrap();
        let leaf = loaded.issue(&request(), KeyAlgorithm::EcdsaP256, 365, now).unwrap();
        let expiry = not_after(&leaf.pair.cert).unwrap();
        assert!((expiry - now - Duration::days(365)).abs() < Duration::seconds(2));
        assert_eq!(leaf.fingerprint, request().fingerprint(&ca, KeyAlgorithm::EcdsaP256));
        let mut other = request();
        other.organizations.clear();
        assert_ne!(leaf.fingerprint, other.fingerprint(&ca, KeyAlgorithm::EcdsaP256));
        assert_ne!(leaf.fingerprint, request().fingerprint(&ca, KeyAlgorithm::Rsa2048));
    }
}
