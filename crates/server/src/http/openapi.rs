//! The OpenAPI 3.1 description of the REST API, `GET /v1/openapi.json`.
//!
//! It is built from the code: each handler's `#[utoipa::path]` gives its route, parameters,
//! body and success answers, and the wire types give their schemas (natter-proto's `openapi`
//! feature, so clients of the proto crate do not pay for it). The router is assembled from the
//! same attributes (utoipa-axum's `routes!`), so no route is served undescribed. What every
//! route shares is added here once ([`Shared`]): bearer auth unless the route says otherwise,
//! and the error answer for every status an error code is carried by, an [`ErrorBody`] whose
//! `code` is one of the stable [`ErrorCode`]s.
//!
//! The WebSocket's frames are not HTTP and are described in docs/protocol.md; the upgrade
//! itself is listed.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, Ref, RefOr, ResponseBuilder, Schema, SecurityRequirement, ServerBuilder,
};
use utoipa::{Modify, OpenApi};

use natter_proto::{ErrorBody, ErrorCode};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Natter",
        description = "The REST API of the Natter chat server. The WebSocket protocol, the \
            guarantees and the meaning of each field are in docs/protocol.md.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(ErrorBody, ErrorCode))
)]
pub(super) struct ApiDoc;

/// What every operation has in common, added once the router has collected the handlers'
/// own descriptions (a derive's `modifiers` would run before).
struct Shared;

/// The name of the error answer under `components.responses`.
const ERROR: &str = "Error";

impl Modify for Shared {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        api.servers = Some(vec![ServerBuilder::new().url("/").build()]);
        let components = api.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            RefOr::T(SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            ))
        };
        let schemes = &mut components.security_schemes;
        schemes.insert("bearer".into(), bearer("A session token from `POST /v1/sessions`."));
        schemes.insert("metrics".into(), bearer("The server's `metrics_token`."));
        schemes.insert(
            "ticket".into(),
            RefOr::T(SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "ticket",
                "A one-use ticket from `POST /v1/tickets`, for `EventSource` (no headers).",
            )))),
        );
        let error = ResponseBuilder::new()
            .description(
                "The request failed: `code` is stable (see ErrorCode and docs/protocol.md), \
                 `message` is for people; `too_many_requests` carries `retry_after_ms` and a \
                 `Retry-After` header.",
            )
            .content(
                "application/json",
                ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
            )
            .build();
        components.responses.insert(ERROR.into(), RefOr::T(error));
        // Every route takes a token unless its own `security` says otherwise.
        api.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
        for item in api.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
            ];
            for operation in operations.into_iter().flatten() {
                add_error_answer(operation);
            }
        }
    }
}

/// Every status an error code is carried by is an answer of every operation, with the error
/// body (an operation that documents a status itself, such as the email pages' HTML 403,
/// keeps its own). Listed, not `default`: any other status is one the document does not
/// describe, which schemathesis' `status_code_conformance` then reports.
fn add_error_answer(operation: &mut Operation) {
    let responses = &mut operation.responses.responses;
    for status in ErrorCode::ALL.map(ErrorCode::http_status) {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::new(format!("#/components/responses/{ERROR}"))));
    }
}

/// Raw bytes: an upload's body, a download.
pub(super) struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/octet-stream")
            .build()
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

/// The document, completed with what all operations share and rendered once: it only
/// changes with the code.
pub(super) fn document(mut api: utoipa::openapi::OpenApi) -> String {
    Shared.modify(&mut api);
    api.to_pretty_json().expect("the OpenAPI document serializes")
}
