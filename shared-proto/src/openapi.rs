//! JSON Schemas for the API's wire types, built only with the `openapi` feature (the hub
//! turns it on; the agent never links utoipa). The structs derive `utoipa::ToSchema`
//! next to their serde derives; this module holds what a derive cannot see: the types
//! with hand-written serde (timestamps, quantities) and the string shapes that
//! [`crate::validate`] enforces (DNS labels, label keys and values, image references,
//! Config keys), as schema-only types that fields name with `#[schema(value_type = …)]`.
//!
//! The patterns are the validator's rules written as regular expressions (ECMA-262
//! and Python agree on every construct used here: no look-around); tests in the hub
//! (`api::openapi`) check each against the validator on the same strings.

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};

/// A DNS-1123 label ([`crate::validate::dns_label_problem`]).
pub const DNS_LABEL: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// A DNS label or nothing (an optional site).
pub const DNS_LABEL_OR_EMPTY: &str = "^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$";
/// A label key, `[prefix/]name` ([`crate::validate::label_problem`]); the prefix is a
/// DNS subdomain of at most three labels here.
pub const LABEL_KEY: &str = "^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?){0,2}/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
/// A label value: empty, or label-shaped.
pub const LABEL_VALUE: &str = "^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$";
/// An image reference, `name[:tag]` or `name@sha256:<hex>`
/// ([`crate::validate::image_reference_problem`]).
pub const IMAGE_REFERENCE: &str = "^([a-z0-9][-a-z0-9._]*(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?/)?[a-z0-9][-a-z0-9._]*(/[a-z0-9][-a-z0-9._]*)*(:[-A-Za-z0-9_.]{1,128}|@sha256:[a-f0-9]{64})?$";
/// A key of a `Config` or a `Secret` ([`crate::validate::config_key_problem`]): a file
/// name, not `.` or `..`.
pub const CONFIG_KEY: &str = "^([-_a-zA-Z0-9][-._a-zA-Z0-9]{0,252}|\\.[-_a-zA-Z0-9][-._a-zA-Z0-9]{0,251}|\\.\\.[-._a-zA-Z0-9]{1,251})$";
/// A CPU quantity as a string: cores (`2`, `0.5`) or millicores (`500m`), as read and
/// as shown.
pub const CPU_QUANTITY: &str = "^([0-9]{1,9}(\\.[0-9]{0,3})?|\\.[0-9]{1,3}|[0-9]{1,12}m)$";
/// A size as a string: bytes or a binary or decimal suffix (`64Mi`, `1G`), as read and
/// as shown: every form stays under [`crate::quantity::MAX_BYTES`].
pub const BYTES_QUANTITY: &str = "^([0-9]{1,18}|[0-9]{1,14}Ki|[0-9]{1,15}(k|K)|[0-9]{1,11}Mi|[0-9]{1,12}M|[0-9]{1,8}Gi|[0-9]{1,9}G|[0-9]{1,5}Ti|[0-9]{1,6}T)$";
/// A memory limit as a string: at least 4Mi, in any form [`BYTES_QUANTITY`] takes.
pub const MEMORY_LIMIT: &str = "^((419430[4-9]|41943[1-9][0-9]|4194[4-9][0-9]{2}|419[5-9][0-9]{3}|4[2-9][0-9]{5}|[5-9][0-9]{6}|[1-9][0-9]{7,17})|(409[6-9]|4[1-9][0-9]{2}|[5-9][0-9]{3}|[1-9][0-9]{4,13})Ki|(419[5-9]|4[2-9][0-9]{2}|[5-9][0-9]{3}|[1-9][0-9]{4,14})(k|K)|([4-9]|[1-9][0-9]{1,10})Mi|([5-9]|[1-9][0-9]{1,11})M|[1-9][0-9]{0,7}Gi|[1-9][0-9]{0,8}G|[1-9][0-9]{0,4}Ti|[1-9][0-9]{0,5}T)$";
/// A CPU limit as a string: above zero.
pub const CPU_LIMIT: &str =
    "^([1-9][0-9]{0,8}(\\.[0-9]{0,3})?|0?\\.([1-9][0-9]{0,2}|0[1-9][0-9]?|00[1-9])|[1-9][0-9]{0,11}m)$";

fn string(pattern: &str, max_length: usize, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .max_length(Some(max_length))
        .description(Some(description))
        .into()
}

macro_rules! string_schema {
    ($(#[$doc:meta])* $name:ident, $pattern:expr, $max:expr, $description:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                string($pattern, $max, $description)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

string_schema!(
    /// The name of a site, device, app, container, volume, Config or Secret.
    DnsLabel,
    DNS_LABEL,
    63,
    "A DNS label: 1-63 lower-case letters, digits and '-', starting and ending alphanumeric"
);
string_schema!(
    /// A site name, or empty for none.
    DnsLabelOrEmpty,
    DNS_LABEL_OR_EMPTY,
    63,
    "Empty, or a DNS label"
);
string_schema!(
    /// A label key.
    LabelKey,
    LABEL_KEY,
    317,
    "`[prefix/]name`: the prefix a DNS subdomain, the name 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
);
string_schema!(
    /// A label value.
    LabelValue,
    LABEL_VALUE,
    63,
    "Empty, or 1-63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
);
string_schema!(
    /// An image reference.
    ImageReference,
    IMAGE_REFERENCE,
    255,
    "An image imported into the hub: lower-case `name[:tag]` or `name@sha256:<hex>`, e.g. demo-httpd:1.0"
);
string_schema!(
    /// A key of a `Config` or a `Secret`.
    ConfigKey,
    CONFIG_KEY,
    253,
    "A file name: letters, digits, '-', '_' and '.', not . or .."
);

/// A network, `addr/prefix` ([`crate::validate::parse_cidr`]): IPv4, or IPv6 written
/// out in full (the validator also reads the `::` forms).
pub const CIDR: &str = "^(((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/([0-9]|[12][0-9]|3[0-2])|([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$";

string_schema!(
    /// A network an isolated app may reach.
    Cidr,
    CIDR,
    43,
    "A network: addr/prefix, e.g. 10.0.0.0/8 or 2001:db8::/32"
);

impl utoipa::PartialSchema for crate::Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 time"))
            .into()
    }
}
impl utoipa::ToSchema for crate::Timestamp {}

/// A quantity: a string as `pattern` says, or an integer up to `max` (cores for CPU,
/// bytes for sizes; shown as a string either way).
fn quantity(pattern: &str, max: u64, description: &str) -> RefOr<Schema> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern)))
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).maximum(Some(max as f64)))
        .description(Some(description))
        .into()
}

impl utoipa::PartialSchema for crate::CpuMillis {
    fn schema() -> RefOr<Schema> {
        quantity(
            CPU_QUANTITY,
            999_999_999,
            "CPU: cores (\"2\", \"0.5\", or an integer) or millicores (\"500m\")",
        )
    }
}
impl utoipa::ToSchema for crate::CpuMillis {}

impl utoipa::PartialSchema for crate::Bytes {
    fn schema() -> RefOr<Schema> {
        quantity(
            BYTES_QUANTITY,
            crate::quantity::MAX_BYTES,
            "Bytes, as an integer or with a suffix Ki, Mi, Gi, Ti, k, M, G, T (\"64Mi\")",
        )
    }
}
impl utoipa::ToSchema for crate::Bytes {}
