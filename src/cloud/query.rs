//! EC2 Query and EBS direct's text forms: `k=v&…` bodies and path segments,
//! percent-encoded as SigV4 wants (RFC 3986's unreserved characters kept).

/// `k=v&…`, percent-encoded as SigV4 and EC2 want (RFC 3986 unreserved kept).
pub fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One value percent-encoded.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_is_rfc3986() {
        assert_eq!(
            form(&[("Action", "RunInstances"), ("UserData", "a+b/c= d")]),
            "Action=RunInstances&UserData=a%2Bb%2Fc%3D%20d"
        );
    }
}
