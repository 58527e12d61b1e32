//! Deserialization and validation of `RuntimePolicy` documents.
//!
//! Every check runs inside a `Visitor` method of the value it is about. That
//! matters because serde_yaml attaches the position and field path of the
//! value it is deserializing to an error raised there. An error raised after
//! a value's `deserialize_*` call has returned (for example by
//! `#[serde(try_from)]`) is attached to the enclosing mapping instead.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::model::{
    EgressRule, ExecPolicy, FilesystemPolicy, Mode, Peer, PortRange, Protocol, Selector,
};
use super::{API_VERSION, KIND};

/// One non-empty document of a policy file, before the checks that need the
/// whole document (the kernel rule limit).
#[derive(Debug)]
pub(super) struct PolicyDocument {
    pub name: String,
    pub selector: Selector,
    pub mode: Mode,
    pub filesystem: Option<FilesystemPolicy>,
    pub exec: Option<ExecPolicy>,
    /// `spec.network`: `None` when absent, `Some(None)` when it has no
    /// `egress` field.
    pub network: Option<Option<Vec<EgressRule>>>,
}

impl<'de> Deserialize<'de> for PolicyDocument {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_map(
            deserializer,
            "a RuntimePolicy mapping",
            |fields: DocumentFields| {
                Ok(PolicyDocument {
                    name: fields.metadata.name.0,
                    selector: fields.spec.selector,
                    mode: fields.spec.mode.0,
                    filesystem: fields.spec.filesystem,
                    exec: fields.spec.exec,
                    network: fields.spec.network.map(|network| network.egress),
                })
            },
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DocumentFields {
    #[allow(dead_code)] // Checked while it is read.
    api_version: ApiVersion,
    #[allow(dead_code)] // Checked while it is read.
    kind: Kind,
    metadata: MetadataFields,
    spec: SpecFields,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a metadata mapping")]
struct MetadataFields {
    name: PolicyName,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a spec mapping")]
struct SpecFields {
    selector: Selector,
    mode: ModeField,
    #[serde(default, deserialize_with = "present")]
    filesystem: Option<FilesystemPolicy>,
    #[serde(default, deserialize_with = "present")]
    exec: Option<ExecPolicy>,
    #[serde(default, deserialize_with = "present")]
    network: Option<NetworkFields>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a network mapping")]
struct NetworkFields {
    /// `egress: null` (or an empty value) restricts like `egress: []`,
    /// because a field that is present must never widen what is allowed.
    #[serde(default, deserialize_with = "egress_rules")]
    egress: Option<Vec<EgressRule>>,
}

/// Deserializes a field that is present in the document, so that `null` or
/// an empty value is checked by `T` instead of being read as "absent".
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

fn egress_rules<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<EgressRule>>, D::Error> {
    let rules = Option::<Vec<EgressRule>>::deserialize(deserializer)?;
    Ok(Some(rules.unwrap_or_default()))
}

/// The marker value `apiVersion: parapet.dev/v1alpha1`.
struct ApiVersion;

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "an apiVersion string", |value| {
            if value == API_VERSION {
                Ok(ApiVersion)
            } else {
                Err(format!(
                    "unsupported apiVersion {value:?}, expected {API_VERSION:?}"
                ))
            }
        })
    }
}

/// The marker value `kind: RuntimePolicy`.
struct Kind;

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "a kind string", |value| {
            if value == KIND {
                Ok(Kind)
            } else {
                Err(format!("unsupported kind {value:?}, expected {KIND:?}"))
            }
        })
    }
}

struct PolicyName(String);

impl<'de> Deserialize<'de> for PolicyName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "a policy name", |value| {
            check_dns_label("policy name", value).map(|()| PolicyName(value.to_owned()))
        })
    }
}

struct ModeField(Mode);

impl<'de> Deserialize<'de> for ModeField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "a mode string", |value| match value {
            "enforce" => Ok(ModeField(Mode::Enforce)),
            "audit" => Ok(ModeField(Mode::Audit)),
            _ => Err(format!("unknown mode {value:?}, expected enforce or audit")),
        })
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_map(
            deserializer,
            "a selector mapping",
            |fields: SelectorFields| {
                let match_labels: BTreeMap<String, String> = fields
                    .match_labels
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(key, value)| (key.0, value.0))
                    .collect();
                if fields.namespace.is_none() && match_labels.is_empty() {
                    return Err(
                        "a selector needs namespace or matchLabels, because without them it \
                         would select every pod on the node"
                            .to_owned(),
                    );
                }
                Ok(Selector {
                    namespace: fields.namespace.map(|namespace| namespace.0),
                    match_labels,
                    containers: fields
                        .containers
                        .map(|names| names.into_iter().map(|name| name.0).collect()),
                })
            },
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectorFields {
    #[serde(default, deserialize_with = "present")]
    namespace: Option<Namespace>,
    #[serde(default)]
    match_labels: Option<BTreeMap<LabelKey, LabelValue>>,
    #[serde(default, deserialize_with = "container_names")]
    containers: Option<Vec<ContainerName>>,
}

fn container_names<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<ContainerName>>, D::Error> {
    deserialize_non_empty_list(
        deserializer,
        "`containers` must list at least one container name, or be omitted to select every \
         container of the pod",
    )
    .map(Some)
}

struct Namespace(String);

impl<'de> Deserialize<'de> for Namespace {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "a namespace name", |value| {
            check_dns_label("namespace", value).map(|()| Namespace(value.to_owned()))
        })
    }
}

struct ContainerName(String);

impl<'de> Deserialize<'de> for ContainerName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "a container name", |value| {
            check_dns_label("container name", value).map(|()| ContainerName(value.to_owned()))
        })
    }
}

/// A Kubernetes label key: an optional DNS subdomain prefix and `/`, then a
/// name of at most 63 characters.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct LabelKey(String);

impl<'de> Deserialize<'de> for LabelKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "a label key", |value| {
            check_label_key(value).map(|()| LabelKey(value.to_owned()))
        })
    }
}

struct LabelValue(String);

impl<'de> Deserialize<'de> for LabelValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "a label value", |value| {
            if value.is_empty() || is_label_name(value) {
                Ok(LabelValue(value.to_owned()))
            } else {
                Err(format!(
                    "invalid label value {value:?}: expected at most 63 letters, digits, '-', \
                     '_' or '.', starting and ending with a letter or digit"
                ))
            }
        })
    }
}

impl<'de> Deserialize<'de> for EgressRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_map(
            deserializer,
            "an egress rule mapping",
            |fields: EgressRuleFields| {
                Ok(EgressRule {
                    to: fields.to,
                    ports: fields.ports,
                })
            },
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressRuleFields {
    #[serde(deserialize_with = "peers")]
    to: Vec<Peer>,
    #[serde(default, deserialize_with = "port_ranges")]
    ports: Option<Vec<PortRange>>,
}

fn peers<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Peer>, D::Error> {
    deserialize_non_empty_list(
        deserializer,
        "an egress rule must list at least one peer in `to`",
    )
}

fn port_ranges<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<PortRange>>, D::Error> {
    deserialize_non_empty_list(
        deserializer,
        "`ports` must list at least one port, or be omitted to allow every port",
    )
    .map(Some)
}

impl<'de> Deserialize<'de> for Peer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_map(deserializer, "a peer mapping", |fields: PeerFields| match (
            fields.cidr,
            fields.address,
        ) {
            (Some(cidr), None) => Ok(Peer::Cidr(cidr.0)),
            (None, Some(address)) => Ok(Peer::Address(address.0)),
            _ => Err("a peer needs exactly one of cidr or address".to_owned()),
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFields {
    #[serde(default, deserialize_with = "present")]
    cidr: Option<Cidr>,
    #[serde(default, deserialize_with = "present")]
    address: Option<Address>,
}

/// `cidr:` of a peer.
struct Cidr(IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "a CIDR string", |value| {
            parse_cidr(value).map(Cidr)
        })
    }
}

pub(super) fn parse_cidr(value: &str) -> Result<IpNet, String> {
    let net = IpNet::from_str(value).map_err(|_| {
        format!("invalid CIDR {value:?}, expected ADDRESS/PREFIX-LENGTH such as 10.0.0.0/8")
    })?;
    if net.addr() != net.network() {
        return Err(format!(
            "invalid CIDR {value:?}: host bits set, did you mean {}?",
            net.trunc()
        ));
    }
    Ok(canonical_net(net))
}

/// Returns an IPv4-mapped IPv6 prefix of length 96 or more as the IPv4
/// prefix it covers, and any other prefix unchanged.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
    {
        let v4_net = Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix length is at most 32");
        return IpNet::V4(v4_net);
    }
    net
}

/// `address:` of a peer.
struct Address(IpAddr);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "an IP address string", |value| {
            IpAddr::from_str(value)
                .map(|addr| Address(addr.to_canonical()))
                .map_err(|_| {
                    format!(
                        "invalid IP address {value:?}, expected one IPv4 or IPv6 address (use \
                         cidr for a range)"
                    )
                })
        })
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_map(deserializer, "a port mapping", |fields: PortFields| {
            let start = fields.port.0;
            let end = fields.end_port.map_or(start, |end_port| end_port.0);
            if end < start {
                return Err(format!("endPort {end} is less than port {start}"));
            }
            Ok(PortRange {
                start,
                end,
                protocol: fields.protocol.map(|protocol| protocol.0),
            })
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortFields {
    port: Port,
    #[serde(default, deserialize_with = "present")]
    end_port: Option<Port>,
    #[serde(default, deserialize_with = "present")]
    protocol: Option<ProtocolField>,
}

/// A TCP or UDP port, 1 to 65535.
struct Port(u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u64(PortVisitor)
    }
}

struct PortVisitor;

impl Visitor<'_> for PortVisitor {
    type Value = Port;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a port number from 1 to 65535")
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Port, E> {
        match u16::try_from(value) {
            Ok(port) if port != 0 => Ok(Port(port)),
            _ => Err(E::custom(format!(
                "invalid port {value}, expected a number from 1 to 65535"
            ))),
        }
    }
}

struct ProtocolField(Protocol);

impl<'de> Deserialize<'de> for ProtocolField {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_checked_str(deserializer, "a protocol string", |value| match value {
            "TCP" => Ok(ProtocolField(Protocol::Tcp)),
            "UDP" => Ok(ProtocolField(Protocol::Udp)),
            _ => Err(format!(
                "unknown protocol {value:?}, expected TCP or UDP (omit protocol to allow both)"
            )),
        })
    }
}

/// Checks a DNS-1123 label: 1 to 63 lowercase letters, digits and `-`,
/// starting and ending with a letter or digit.
fn check_dns_label(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    let bytes = value.as_bytes();
    let inner_ok = bytes
        .iter()
        .all(|&byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    let ends_ok = bytes[0] != b'-' && bytes[bytes.len() - 1] != b'-';
    if value.len() > 63 || !inner_ok || !ends_ok {
        return Err(format!(
            "invalid {what} {value:?}: expected at most 63 lowercase letters, digits or '-', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks the name part of a label key, or a non-empty label value.
fn is_label_name(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

/// Checks a DNS-1123 subdomain: dot-separated DNS labels, at most 253
/// characters.
fn is_dns_subdomain(value: &str) -> bool {
    value.len() <= 253
        && value
            .split('.')
            .all(|label| check_dns_label("", label).is_ok())
}

fn check_label_key(value: &str) -> Result<(), String> {
    let valid = match value.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(value),
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid label key {value:?}: expected an optional DNS subdomain and '/', then at \
             most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

/// Deserializes a string and checks it inside `visit_str`, so that an error
/// carries the position of the string.
fn deserialize_checked_str<'de, D, T>(
    deserializer: D,
    expecting: &'static str,
    check: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    // `deserialize_any` rather than `deserialize_str`: serde_yaml hands
    // any plain scalar to `visit_str` when asked for a string, so `42`,
    // `true` or a tagged `!x name` would pass for text. Kubernetes rejects
    // those too, and quoting makes the intent explicit.
    deserializer.deserialize_any(CheckedStrVisitor { expecting, check })
}

struct CheckedStrVisitor<T> {
    expecting: &'static str,
    check: fn(&str) -> Result<T, String>,
}

impl<'de, T> Visitor<'de> for CheckedStrVisitor<T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        (self.check)(value).map_err(E::custom)
    }

    /// Checks an empty value, `~` or `null` as the empty string.
    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        self.visit_str("")
    }

    /// serde_yaml visits an enum for a tagged node such as `!tag value`.
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<T, A::Error> {
        Err(de::Error::invalid_type(
            de::Unexpected::Other("tagged value"),
            &self,
        ))
    }
}

/// Deserializes the fields `F` of a mapping and turns them into `T` inside
/// `visit_map`, so that an error from `check` carries the position and path
/// of the mapping.
pub(super) fn deserialize_checked_map<'de, D, F, T>(
    deserializer: D,
    expecting: &'static str,
    check: fn(F) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: Deserialize<'de>,
{
    deserializer.deserialize_map(CheckedMapVisitor {
        expecting,
        check,
        fields: PhantomData,
    })
}

struct CheckedMapVisitor<F, T> {
    expecting: &'static str,
    check: fn(F) -> Result<T, String>,
    fields: PhantomData<F>,
}

impl<'de, F: Deserialize<'de>, T> Visitor<'de> for CheckedMapVisitor<F, T> {
    type Value = T;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(self.expecting)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let fields = F::deserialize(MapAccessDeserializer::new(map))?;
        (self.check)(fields).map_err(de::Error::custom)
    }
}

/// Deserializes a list that must have at least one element. `empty_message`
/// is the error for an empty list, `null` or an empty value.
fn deserialize_non_empty_list<'de, D, T>(
    deserializer: D,
    empty_message: &'static str,
) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    deserializer.deserialize_seq(NonEmptyListVisitor {
        empty_message,
        element: PhantomData,
    })
}

struct NonEmptyListVisitor<T> {
    empty_message: &'static str,
    element: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for NonEmptyListVisitor<T> {
    type Value = Vec<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a non-empty list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element()? {
            elements.push(element);
        }
        if elements.is_empty() {
            return Err(de::Error::custom(self.empty_message));
        }
        Ok(elements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_label_accepts_valid_names() {
        for name in ["a", "records-db", "0abc", "a1-b2", &"a".repeat(63)] {
            assert_eq!(check_dns_label("name", name), Ok(()), "{name}");
        }
    }

    #[test]
    fn dns_label_rejects_invalid_names() {
        for name in [
            "",
            "-a",
            "a-",
            "Records",
            "a_b",
            "a.b",
            "ä",
            &"a".repeat(64),
        ] {
            assert!(check_dns_label("name", name).is_err(), "{name}");
        }
    }

    #[test]
    fn label_key_accepts_prefixed_and_plain() {
        for key in [
            "app",
            "app.kubernetes.io/name",
            "App_1",
            "a.b-c_d",
            "example.com/x",
        ] {
            assert_eq!(check_label_key(key), Ok(()), "{key}");
        }
    }

    #[test]
    fn label_key_rejects_invalid() {
        for key in [
            "",
            "/app",
            "Example.com/app",
            "app/",
            "-app",
            "a b",
            "a/b/c",
        ] {
            assert!(check_label_key(key).is_err(), "{key}");
        }
    }

    #[test]
    fn cidr_parses_and_canonicalizes() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok("10.0.0.0/8".parse().unwrap()));
        assert_eq!(parse_cidr("fd00::/8"), Ok("fd00::/8".parse().unwrap()));
        assert_eq!(
            parse_cidr("::ffff:10.0.0.0/104"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok("0.0.0.0/0".parse().unwrap()));
    }

    #[test]
    fn cidr_with_host_bits_suggests_network() {
        assert_eq!(
            parse_cidr("10.1.2.3/8"),
            Err("invalid CIDR \"10.1.2.3/8\": host bits set, did you mean 10.0.0.0/8?".to_owned())
        );
    }

    #[test]
    fn cidr_rejects_bare_address() {
        let error = parse_cidr("10.0.0.1").unwrap_err();
        assert_eq!(
            error,
            "invalid CIDR \"10.0.0.1\", expected ADDRESS/PREFIX-LENGTH such as 10.0.0.0/8"
        );
    }
}
