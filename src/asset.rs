//! Files sidewire serves itself under the reserved `prefix` (SPEC §8): `client.js`, the
//! browser client in `src/assets/client.js`, and `client.d.ts`, its TypeScript
//! declarations in `src/assets/client.d.ts`.
//!
//! Owns: the embedded bytes, their strong `ETag` (SHA-256, computed once) and the
//! caching headers; `If-None-Match` answers 304. Does not: touch the backend, read
//! files at runtime (the asset is compiled in), or serve anything else under the
//! prefix (404 JSON, as before).

use std::sync::LazyLock;

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};

use crate::respond::{Body, Rejection, empty, full};

/// The browser client, embedded so the binary is all there is to deploy.
const CLIENT_JS: &str = include_str!("assets/client.js");
/// Its TypeScript declarations, for apps to save next to their sources.
const CLIENT_DTS: &str = include_str!("assets/client.d.ts");

/// Short enough that a new release reaches browsers within minutes; the `ETag` makes a
/// revalidation a 304 without the body.
const CACHE_CONTROL: &str = "public, max-age=300";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
        // 128 bits of the hash are plenty to tell two versions apart.
        let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        let etag = HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"0\""));
        Self { body, content_type, etag }
    }
}

static CLIENT: LazyLock<Asset> = LazyLock::new(|| Asset::new(CLIENT_JS, "application/javascript; charset=utf-8"));
/// `application/typescript`: what the file is (the de-facto type, as Deno and CDNs serve
/// `.ts`), so tools can tell it from text; browsers do not run it either way.
static TYPES: LazyLock<Asset> = LazyLock::new(|| Asset::new(CLIENT_DTS, "application/typescript; charset=utf-8"));

/// Serves `rest`, the path after the prefix.
pub fn serve<B>(rest: &str, req: &Request<B>) -> Result<Response<Body>, Rejection> {
    let asset: &Asset = match rest {
        "/client.js" => &CLIENT,
        "/client.d.ts" => &TYPES,
        _ => return Err(Rejection::not_found()),
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = Rejection::json(StatusCode::METHOD_NOT_ALLOWED, "bad_request", "use GET or HEAD");
        r.headers.push((header::ALLOW, HeaderValue::from_static("GET, HEAD")));
        return Err(r);
    }
    let fresh = not_modified(req.headers(), &asset.etag);
    let mut res =
        if fresh || req.method() == Method::HEAD { Response::new(empty()) } else { Response::new(full(asset.body)) };
    let h = res.headers_mut();
    if fresh {
        *res.status_mut() = StatusCode::NOT_MODIFIED;
    } else {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    }
    let h = res.headers_mut();
    h.insert(header::ETAG, asset.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    Ok(res)
}

/// `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2) or is `*`.
fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    headers.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/_sidewire/client.js");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn etag_is_a_strong_hash_of_the_content() {
        let etag = CLIENT.etag.to_str().unwrap();
        assert_eq!(etag.len(), 34, "{etag}");
        assert!(etag.starts_with('"') && etag.ends_with('"') && !etag.starts_with("W/"));
        assert_eq!(etag, Asset::new(CLIENT_JS, "x").etag.to_str().unwrap(), "same content, same tag");
        assert_ne!(etag, Asset::new("other", "x").etag.to_str().unwrap());
    }

    #[test]
    fn if_none_match_forms() {
        let etag = CLIENT.etag.to_str().unwrap().to_owned();
        let status = |v: &str| serve("/client.js", &get(&[("if-none-match", v)])).unwrap().status();
        assert_eq!(status(&etag), StatusCode::NOT_MODIFIED);
        assert_eq!(status(&format!("W/{etag}")), StatusCode::NOT_MODIFIED);
        assert_eq!(status(&format!("\"old\", {etag}")), StatusCode::NOT_MODIFIED);
        assert_eq!(status("*"), StatusCode::NOT_MODIFIED);
        assert_eq!(status("\"old\""), StatusCode::OK);
        assert_eq!(serve("/client.js", &get(&[])).unwrap().status(), StatusCode::OK);
    }

    #[test]
    fn client_d_ts_has_its_own_type_and_tag() {
        let res = serve("/client.d.ts", &get(&[])).unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/typescript; charset=utf-8");
        assert_eq!(res.headers()[header::CONTENT_LENGTH], CLIENT_DTS.len().to_string().as_str());
        let etag = res.headers()[header::ETAG].clone();
        assert_ne!(etag, CLIENT.etag, "each file has its own tag");
        let again = serve("/client.d.ts", &get(&[("if-none-match", etag.to_str().unwrap())])).unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = serve("/client.d.ts", &get(&[("if-none-match", CLIENT.etag.to_str().unwrap())])).unwrap();
        assert_eq!(other.status(), StatusCode::OK, "client.js's tag does not validate client.d.ts");
    }

    #[test]
    fn only_the_client_files_and_only_get_or_head() {
        assert_eq!(serve("/other.js", &get(&[])).unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(serve("/client.ts", &get(&[])).unwrap_err().status, StatusCode::NOT_FOUND);
        assert_eq!(serve("", &get(&[])).unwrap_err().status, StatusCode::NOT_FOUND);
        let post = Request::post("/_sidewire/client.js").body(()).unwrap();
        assert_eq!(serve("/client.js", &post).unwrap_err().status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(serve("/client.d.ts", &post).unwrap_err().status, StatusCode::METHOD_NOT_ALLOWED);
    }
}
