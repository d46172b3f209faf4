//! The web client the binary serves at `/` (crates/server/src/http/webapp.rs): the page with
//! its security headers, the scripts it loads, revalidation by `ETag`, and nothing else under
//! `/app/`. What the client does in a browser is shown by web/app/test/browser.test.mjs.

use natter_testkit::{TestServer, within};
use reqwest::{StatusCode, header};

async fn get(server: &TestServer, path: &str, etag: Option<&str>) -> reqwest::Response {
    let mut req = server.http.get(server.url(path));
    if let Some(tag) = etag {
        req = req.header(header::IF_NONE_MATCH, tag);
    }
    within(path, req.send()).await.expect("request")
}

fn header_of(res: &reqwest::Response, name: header::HeaderName) -> &str {
    res.headers().get(&name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

#[tokio::test]
async fn the_page_and_its_files_are_served_with_strict_headers_and_etags() {
    let server = TestServer::start().await;
    let page = get(&server, "/", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(header_of(&page, header::CONTENT_TYPE), "text/html; charset=utf-8");
    let csp = header_of(&page, header::CONTENT_SECURITY_POLICY).to_owned();
    for part in
        ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]
    {
        assert!(csp.contains(part), "{part} in {csp}");
    }
    assert_eq!(header_of(&page, header::X_FRAME_OPTIONS), "DENY");
    let html = within("the page", page.text()).await.expect("page");
    for script in ["/app/app.js", "/app/app.css"] {
        assert!(html.contains(script), "the page loads {script}");
    }

    for (path, kind) in [
        ("/app/app.js", "text/javascript"),
        ("/app/worker.js", "text/javascript"),
        ("/app/app.css", "text/css"),
    ] {
        let res = get(&server, path, None).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert!(header_of(&res, header::CONTENT_TYPE).starts_with(kind), "{path}");
        assert_eq!(header_of(&res, header::CACHE_CONTROL), "no-cache");
        assert_eq!(header_of(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        let etag = header_of(&res, header::ETAG).to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "a strong ETag: {etag}");
        let len = within("a file", res.bytes()).await.expect("body").len();
        assert!(len > 100, "{path} has content");
        // Unchanged: revalidation answers 304 without the body; another tag gets the file.
        let again = get(&server, path, Some(&etag)).await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        let stale = get(&server, path, Some("\"not-this-one\"")).await;
        assert_eq!(stale.status(), StatusCode::OK, "{path}");
    }

    for path in ["/app/index.html", "/app/nope.js", "/app/..%2Fmain.rs"] {
        let res = get(&server, path, None).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    server.stop().await;
}
