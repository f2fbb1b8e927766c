//! Callers named by their client certificate, for mutual TLS. The TLS handshake has
//! already checked the chain and validity period; this only reads the names and maps
//! them to roles.

use std::sync::Arc;

use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use super::{Credential, Identity, RoleTable, roles_of};

/// Roles by certificate name; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct CertificateRoles {
    roles: Arc<RoleTable>,
}

impl CertificateRoles {
    pub(crate) fn new(roles: RoleTable) -> Self {
        Self { roles: Arc::new(roles) }
    }

    /// The caller `certificate` (DER) names: its first name that has roles, in the order
    /// common name, URI names, DNS names. `Err` lists the names when none has roles.
    pub(crate) fn identify(&self, certificate: &[u8]) -> Result<Identity, String> {
        let names = names(certificate)?;
        let Some(user) = names.iter().find(|name| self.roles.contains_key(name.as_str())) else {
            return Err(format!(
                "no name of the client certificate ({}) is in server.auth.mtls_roles",
                names.join(", ")
            ));
        };
        let roles = roles_of(&self.roles, [user.as_str()]);
        Ok(Identity { user: user.clone(), roles, credential: Credential::Certificate })
    }
}

/// The names a certificate gives its subject: common names, then URI and DNS alternative
/// names.
fn names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, certificate) =
        X509Certificate::from_der(der).map_err(|error| format!("the client certificate does not parse: {error}"))?;
    let mut names: Vec<String> =
        certificate.subject().iter_common_name().filter_map(|name| name.as_str().ok()).map(str::to_owned).collect();
    if let Ok(Some(alternative)) = certificate.subject_alternative_name() {
        let uris = alternative.value.general_names.iter().filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        });
        let dns = alternative.value.general_names.iter().filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        });
        names.extend(uris.chain(dns).collect::<Vec<_>>());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn certificate(common_name: &str, alternative_names: Vec<rcgen::SanType>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        params.subject_alt_names = alternative_names;
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("certificate").der().to_vec()
    }

    fn roles(entries: &[(&str, Role)]) -> CertificateRoles {
        CertificateRoles::new(entries.iter().map(|(name, role)| ((*name).to_owned(), vec![*role])).collect())
    }

    #[test]
    fn the_first_mapped_name_is_the_caller() {
        let uri = rcgen::SanType::URI("spiffe://cluster.local/ns/ci/sa/deployer".try_into().expect("uri"));
        let dns = rcgen::SanType::DnsName("deployer.ci.svc".try_into().expect("dns"));
        let der = certificate("deployer", vec![uri, dns]);

        let by_name = roles(&[("deployer", Role::Operator)]).identify(&der).expect("mapped");
        assert_eq!((by_name.user.as_str(), by_name.roles.as_slice()), ("deployer", &[Role::Operator][..]));
        let by_uri = roles(&[("spiffe://cluster.local/ns/ci/sa/deployer", Role::Viewer)]).identify(&der).expect("uri");
        assert_eq!(by_uri.roles, [Role::Viewer]);
        let by_dns = roles(&[("deployer.ci.svc", Role::Admin)]).identify(&der).expect("dns");
        assert_eq!((by_dns.user.as_str(), by_dns.credential), ("deployer.ci.svc", Credential::Certificate));

        let unmapped = roles(&[("someone-else", Role::Admin)]).identify(&der).expect_err("unmapped");
        assert!(unmapped.contains("deployer, spiffe://"), "{unmapped}");
    }

    proptest::proptest! {
        /// Whatever bytes arrive as a certificate, reading its names answers or refuses;
        /// it never panics.
        #[test]
        fn any_bytes_are_read_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = roles(&[("x", Role::Viewer)]).identify(&bytes);
        }
    }
}
