//! A call's metadata, from the HTTP request's headers.

use drpc_wire::{
    COMPRESSION_METADATA_KEY, FLOW_CONTROL_METADATA_KEY, Metadata, TIMEOUT_METADATA_KEY,
};
use http::HeaderMap;

/// The header Go's `drpchttp` reads metadata from, one
/// `urlencode(key)=urlencode(value)` pair per header, repeatable.
pub const METADATA_HEADER: &str = "x-drpc-metadata";

/// The default prefix of headers that carry one metadata pair each
/// (`drpc-md-tenant: acme` is the pair `tenant: acme`); see
/// [`Bridge::metadata_prefix`](crate::Bridge::metadata_prefix).
pub const DEFAULT_METADATA_PREFIX: &str = "drpc-md-";

/// The header that sets a call's timeout, in gRPC's format (`250m`, `5S`;
/// [`drpc_wire::parse_timeout`]): the server sees it as the call's
/// deadline, as from any DRPC client.
pub const TIMEOUT_HEADER: &str = "drpc-timeout";

/// Why the request's headers gave no metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MetadataHeaderError {
    /// A `%` not followed by two hex digits, in a pair of
    /// [`METADATA_HEADER`].
    #[error("malformed escape in the {METADATA_HEADER} header: {0:?}")]
    Escape(String),
    /// A value that is not UTF-8.
    #[error("the value of header {0} is not UTF-8")]
    NotUtf8(String),
    /// A key the transport itself sets.
    #[error("metadata key {0:?} is reserved by the transport")]
    Reserved(String),
    /// A timeout header that does not parse.
    #[error("invalid {TIMEOUT_HEADER} header {0:?}: expected digits and a unit (H, M, S, m, u, n)")]
    Timeout(String),
}

/// The metadata of `headers`: the pairs of every [`METADATA_HEADER`]
/// (Go's form: only `%XX` escapes are decoded, `+` stays a plus, a pair
/// without `=` has an empty value), then one pair per header named with
/// `prefix`, the rest of the name as key. A later pair replaces an
/// earlier one with the same key.
///
/// Unlike Go's bridge, which then runs the call without any metadata, a
/// malformed escape fails the request: metadata that carries credentials
/// should not silently vanish.
pub(crate) fn from_headers(
    headers: &HeaderMap,
    prefix: Option<&str>,
) -> Result<Metadata, MetadataHeaderError> {
    let mut metadata = Metadata::new();
    for value in headers.get_all(METADATA_HEADER) {
        let pair = std::str::from_utf8(value.as_bytes())
            .map_err(|_| MetadataHeaderError::NotUtf8(METADATA_HEADER.to_owned()))?;
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = unescape(key).ok_or_else(|| MetadataHeaderError::Escape(pair.to_owned()))?;
        let value = unescape(value).ok_or_else(|| MetadataHeaderError::Escape(pair.to_owned()))?;
        metadata.insert(key, value);
    }
    if let Some(prefix) = prefix.filter(|p| !p.is_empty()) {
        for (name, value) in headers {
            // Header names are lower case; a prefix given in another case
            // still matches.
            let Some(key) = strip_prefix_ignore_case(name.as_str(), prefix) else {
                continue;
            };
            let value = std::str::from_utf8(value.as_bytes())
                .map_err(|_| MetadataHeaderError::NotUtf8(name.as_str().to_owned()))?;
            metadata.insert(key.to_owned(), value.to_owned());
        }
    }
    for reserved in [
        TIMEOUT_METADATA_KEY,
        COMPRESSION_METADATA_KEY,
        FLOW_CONTROL_METADATA_KEY,
    ] {
        if metadata.contains_key(reserved) {
            return Err(MetadataHeaderError::Reserved(reserved.to_owned()));
        }
    }
    Ok(metadata)
}

/// The call's timeout from [`TIMEOUT_HEADER`], if the request has one.
pub(crate) fn timeout(
    headers: &HeaderMap,
) -> Result<Option<std::time::Duration>, MetadataHeaderError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    drpc_wire::parse_timeout(&text)
        .map(Some)
        .ok_or_else(|| MetadataHeaderError::Timeout(text.into_owned()))
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// Decodes `%XX` escapes and nothing else; `None` for a truncated escape
/// or one that is not hex, or bytes that are not UTF-8 once decoded.
fn unescape(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for pair in pairs {
            map.append(METADATA_HEADER, HeaderValue::from_str(pair).unwrap());
        }
        map
    }

    fn pairs(list: &[(&str, &str)]) -> Metadata {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The reference implementation's table (semantics.md §13, item 58).
    #[test]
    fn header_pairs_map_as_in_the_reference() {
        let got = from_headers(
            &headers(&[
                "key1=val1",
                "key2_%3d=val2_%25",
                "key3",
                "=val4",
                "key5=",
                "key6=val6",
                "key6=val7",
                "key8=foo=val8",
                "key9=%3d%25%3D%25",
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            got,
            pairs(&[
                ("key1", "val1"),
                ("key2_=", "val2_%"),
                ("key3", ""),
                ("", "val4"),
                ("key5", ""),
                ("key6", "val7"),
                ("key8", "foo=val8"),
                ("key9", "=%=%"),
            ])
        );
        assert_eq!(
            from_headers(&HeaderMap::new(), None).unwrap(),
            Metadata::new()
        );
        assert_eq!(
            from_headers(&headers(&["a+b=c+d"]), None).unwrap(),
            pairs(&[("a+b", "c+d")]),
            "a plus stays a plus"
        );
    }

    /// Item 59: every malformed escape is an error.
    #[test]
    fn malformed_escapes_are_errors() {
        for bad in [
            "key%",
            "key=val%",
            "key%z1=val",
            "key%1z=val",
            "key=val%z1",
            "key=val%1x",
            "k=%ff",
        ] {
            let err = from_headers(&headers(&[bad]), None).expect_err(bad);
            assert!(
                matches!(err, MetadataHeaderError::Escape(_)),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn prefixed_headers_are_pairs_and_override_the_reference_header() {
        let mut map = headers(&["tenant=one", "other=x"]);
        map.insert("drpc-md-tenant", HeaderValue::from_static("two"));
        map.insert("Drpc-Md-Trace-Id", HeaderValue::from_static("abc"));
        map.insert("drpc-mdx", HeaderValue::from_static("not a pair"));
        map.insert("content-type", HeaderValue::from_static("application/json"));
        let got = from_headers(&map, Some(DEFAULT_METADATA_PREFIX)).unwrap();
        assert_eq!(
            got,
            pairs(&[("other", "x"), ("tenant", "two"), ("trace-id", "abc")]),
            "drpc-mdx lacks the prefix's dash"
        );
        let upper = from_headers(&map, Some("DRPC-MD-")).unwrap();
        assert_eq!(upper, got, "the prefix matches in any case");
        let none = from_headers(&map, None).unwrap();
        assert_eq!(none, pairs(&[("other", "x"), ("tenant", "one")]));
    }

    #[test]
    fn reserved_keys_and_bad_values_are_refused() {
        for key in [
            TIMEOUT_METADATA_KEY,
            COMPRESSION_METADATA_KEY,
            FLOW_CONTROL_METADATA_KEY,
        ] {
            let err = from_headers(&headers(&[&format!("{key}=1")]), None).expect_err(key);
            assert_eq!(err, MetadataHeaderError::Reserved(key.to_owned()));
        }
        let mut map = HeaderMap::new();
        map.insert("drpc-md-x", HeaderValue::from_bytes(b"\xff").unwrap());
        let err = from_headers(&map, Some(DEFAULT_METADATA_PREFIX)).unwrap_err();
        assert_eq!(err, MetadataHeaderError::NotUtf8("drpc-md-x".to_owned()));
    }

    /// Every byte escaped as `%XX`, as a client that escapes everything
    /// sends it.
    fn escape_all(text: &str) -> String {
        text.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    proptest::proptest! {
        /// Any key and value, escaped, come back as they were; the last
        /// duplicate wins.
        #[test]
        fn escaped_pairs_round_trip(key in "\\PC{0,16}", value in "\\PC{0,32}", other in "\\PC{0,8}") {
            let first = format!("{}={}", escape_all(&key), escape_all(&other));
            let last = format!("{}={}", escape_all(&key), escape_all(&value));
            let got = from_headers(&headers(&[&first, &last]), None);
            let reserved = [TIMEOUT_METADATA_KEY, COMPRESSION_METADATA_KEY, FLOW_CONTROL_METADATA_KEY]
                .contains(&key.as_str());
            if reserved {
                proptest::prop_assert!(got.is_err());
            } else {
                proptest::prop_assert_eq!(got.unwrap(), pairs(&[(&key, &value)]));
            }
        }

        /// Whatever visible ASCII a header holds, reading it returns
        /// pairs or an error, and never panics.
        #[test]
        fn any_header_text_is_pairs_or_an_error(text in "[ -~]{0,64}") {
            let _ = from_headers(&headers(&[&text]), Some(DEFAULT_METADATA_PREFIX));
        }
    }

    #[test]
    fn timeouts_parse_in_grpc_format() {
        let mut map = HeaderMap::new();
        assert_eq!(timeout(&map).unwrap(), None);
        map.insert(TIMEOUT_HEADER, HeaderValue::from_static("250m"));
        assert_eq!(
            timeout(&map).unwrap(),
            Some(std::time::Duration::from_millis(250))
        );
        map.insert(TIMEOUT_HEADER, HeaderValue::from_static("soon"));
        assert!(matches!(
            timeout(&map),
            Err(MetadataHeaderError::Timeout(_))
        ));
    }
}
