//! The network interfaces language runtimes import (`wasi:sockets`, `wasi:http`), linked so
//! that their components run, with every call that could reach a network denied.
//!
//! The entry points are the host's own: creating a TCP or UDP socket and name lookup fail
//! with `access-denied`, `outgoing-handler.handle` with `HTTP-request-denied`. Since none of
//! them ever creates a socket, a name-lookup stream or a response future, the methods on
//! those resources (wasmtime-wasi's, linked for their types) can never be reached: a guest
//! cannot forge a resource handle. What remains creatable is inert: the `network` handle
//! from `instance-network` (a capability token, good for nothing here) and `wasi:http`'s
//! in-memory request values (headers, a request, its body buffer), whose only way out is
//! `handle`. Each denial is counted; the count is logged when the task ends.

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::bindings::sockets;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddress, IpAddressFamily};
use wasmtime_wasi::p2::{DynPollable, Network, SocketError, SocketResult, TcpSocket, UdpSocket};
use wasmtime_wasi::sockets::WasiSockets;
use wasmtime_wasi_http::p2::bindings::http::types as http;
use wasmtime_wasi_http::p2::types::{HostFutureIncomingResponse, HostOutgoingRequest};
use wasmtime_wasi_http::{WasiHttp, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks};

use super::TaskState;

/// The outgoing handler, at the newest version this engine serves (an import of any earlier
/// 0.2.x resolves to it).
const OUTGOING_HANDLER: &str = "wasi:http/outgoing-handler@0.2.12";
/// The types interface, likewise.
const HTTP_TYPES: &str = "wasi:http/types@0.2.12";

/// A task's view for the denied entry points: its table (to drop what a denied call was
/// given) and its count of denials.
pub(super) struct Denier<'a> {
    table: &'a mut ResourceTable,
    denials: &'a mut u64,
}

impl Denier<'_> {
    fn deny(&mut self, what: &'static str) {
        *self.denials = self.denials.saturating_add(1);
        tracing::debug!(call = what, "network call denied");
    }
}

struct Deny;

impl HasData for Deny {
    type Data<'a> = Denier<'a>;
}

/// The per-task state the network interfaces use.
pub(super) struct NetworkState {
    http: WasiHttpCtx,
    hooks: NoSend,
    /// Calls denied so far.
    pub(super) denials: u64,
}

/// Most bytes of headers one `wasi:http` `fields` value may hold (the crate's default is
/// 128 KiB). Requests are never sent, so this only bounds what a guest can park in host
/// memory: at most [`super::MAX_RESOURCES`] of them.
const FIELD_BYTES: usize = 8 << 10;
/// Most bytes of a method, scheme, authority or path a guest may set on a request (the
/// crate keeps them whole).
const REQUEST_TEXT_BYTES: usize = 2 << 10;
/// Most bytes one write to an outgoing request's body may carry, and so (one chunk is
/// buffered) what a body can hold: nothing ever reads it.
const BODY_CHUNK_BYTES: usize = 4 << 10;

impl NetworkState {
    pub(super) fn new() -> Self {
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(FIELD_BYTES);
        Self { http, hooks: NoSend, denials: 0 }
    }
}

impl TaskState {
    fn denier(&mut self) -> Denier<'_> {
        Denier { table: &mut self.table, denials: &mut self.network.denials }
    }

    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.network.http,
            table: &mut self.table,
            hooks: &mut self.network.hooks,
        }
    }
}

/// Links `wasi:sockets` and `wasi:http` (types and outgoing-handler), every way out denied.
pub(super) fn link(l: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::sockets::WasiSocketsView as _;
    // Types and methods only: none of them creates a socket (see the module's doc).
    sockets::network::add_to_linker::<_, WasiSockets>(l, &Default::default(), TaskState::sockets)?;
    sockets::instance_network::add_to_linker::<_, WasiSockets>(l, TaskState::sockets)?;
    sockets::tcp::add_to_linker::<_, WasiSockets>(l, TaskState::sockets)?;
    sockets::udp::add_to_linker::<_, WasiSockets>(l, TaskState::sockets)?;
    // The ways in: denied.
    sockets::tcp_create_socket::add_to_linker::<_, Deny>(l, TaskState::denier)?;
    sockets::udp_create_socket::add_to_linker::<_, Deny>(l, TaskState::denier)?;
    ip_name_lookup::add_to_linker::<_, Deny>(l, TaskState::denier)?;
    http::add_to_linker::<_, WasiHttp>(l, &Default::default(), TaskState::http)?;
    cap_request_text(l)?;
    link_outgoing_handler(l)
}

/// What the entry points below share with wasmtime-wasi's sockets: how their errors are
/// told to the guest.
impl sockets::network::Host for Denier<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        error.downcast()
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        let err = self.table.get(&err)?;
        Ok(err.downcast_ref::<std::io::Error>().map(ErrorCode::from))
    }
}

impl sockets::network::HostNetwork for Denier<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        self.table.delete(network)?;
        Ok(())
    }
}

impl sockets::tcp_create_socket::Host for Denier<'_> {
    fn create_tcp_socket(&mut self, _: IpAddressFamily) -> SocketResult<Resource<TcpSocket>> {
        self.deny("tcp-create-socket");
        Err(ErrorCode::AccessDenied.into())
    }
}

impl sockets::udp_create_socket::Host for Denier<'_> {
    async fn create_udp_socket(&mut self, _: IpAddressFamily) -> SocketResult<Resource<UdpSocket>> {
        self.deny("udp-create-socket");
        Err(ErrorCode::AccessDenied.into())
    }
}

impl ip_name_lookup::Host for Denier<'_> {
    fn resolve_addresses(
        &mut self,
        _: Resource<Network>,
        _: String,
    ) -> SocketResult<Resource<ResolveAddressStream>> {
        self.deny("ip-name-lookup");
        Err(ErrorCode::AccessDenied.into())
    }
}

/// `resolve-addresses` never returns a stream, so none of these can be called with a live
/// one; each still answers as if it could.
impl ip_name_lookup::HostResolveAddressStream for Denier<'_> {
    fn resolve_next_address(
        &mut self,
        _: Resource<ResolveAddressStream>,
    ) -> SocketResult<Option<IpAddress>> {
        self.deny("ip-name-lookup");
        Err(ErrorCode::AccessDenied.into())
    }

    fn subscribe(
        &mut self,
        _: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        wasmtime::bail!("no name lookup exists to subscribe to")
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.table.delete(stream)?;
        Ok(())
    }
}

/// The setters of `outgoing-request` that keep a guest's string, redefined to refuse one
/// over [`REQUEST_TEXT_BYTES`] (as they refuse a malformed one) before the crate's own
/// keeps it: otherwise a guest could park gigabytes in host memory, outside its limit.
fn cap_request_text(l: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    use wasmtime::StoreContextMut as Ctx;
    use wasmtime_wasi_http::p2::bindings::http::types::HostOutgoingRequest as Setters;
    type Request = Resource<HostOutgoingRequest>;
    type Set = wasmtime::Result<(Result<(), ()>,)>;
    fn long(s: Option<&str>) -> bool {
        s.is_some_and(|s| s.len() > REQUEST_TEXT_BYTES)
    }
    l.allow_shadowing(true);
    let mut types = l.instance(HTTP_TYPES)?;
    types.func_wrap(
        "[method]outgoing-request.set-method",
        |mut store: Ctx<'_, TaskState>, (r, m): (Request, http::Method)| -> Set {
            let text = match &m {
                http::Method::Other(s) => Some(s.as_str()),
                _ => None,
            };
            if long(text) {
                return Ok((Err(()),));
            }
            Ok((Setters::set_method(&mut store.data_mut().http(), r, m)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-scheme",
        |mut store: Ctx<'_, TaskState>, (r, s): (Request, Option<http::Scheme>)| -> Set {
            let text = match &s {
                Some(http::Scheme::Other(s)) => Some(s.as_str()),
                _ => None,
            };
            if long(text) {
                return Ok((Err(()),));
            }
            Ok((Setters::set_scheme(&mut store.data_mut().http(), r, s)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-authority",
        |mut store: Ctx<'_, TaskState>, (r, a): (Request, Option<String>)| -> Set {
            if long(a.as_deref()) {
                return Ok((Err(()),));
            }
            Ok((Setters::set_authority(&mut store.data_mut().http(), r, a)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-path-with-query",
        |mut store: Ctx<'_, TaskState>, (r, p): (Request, Option<String>)| -> Set {
            if long(p.as_deref()) {
                return Ok((Err(()),));
            }
            Ok((Setters::set_path_with_query(&mut store.data_mut().http(), r, p)?,))
        },
    )?;
    l.allow_shadowing(false);
    Ok(())
}

/// `wasi:http/outgoing-handler.handle`, defined directly: the crate's own would make a
/// response future (and, through the hooks, a request) before any denial could be told.
fn link_outgoing_handler(l: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    type Answer = Result<Resource<HostFutureIncomingResponse>, http::ErrorCode>;
    let mut handler = l.instance(OUTGOING_HANDLER)?;
    handler.func_wrap(
        "handle",
        |mut store: wasmtime::StoreContextMut<'_, TaskState>,
         (request, options): (
            Resource<HostOutgoingRequest>,
            Option<Resource<wasmtime_wasi_http::RequestOptions>>,
        )|
         -> wasmtime::Result<(Answer,)> {
            let mut denier = store.data_mut().denier();
            // `handle` takes both: they end here.
            denier.table.delete(request)?;
            if let Some(options) = options {
                denier.table.delete(options)?;
            }
            denier.deny("outgoing-handler");
            Ok((Err(http::ErrorCode::HttpRequestDenied),))
        },
    )?;
    Ok(())
}

/// The hooks of `wasi:http/types`. Sending is the outgoing handler's, which is the host's
/// own and denies; this one is never reached and denies too.
struct NoSend;

impl WasiHttpHooks for NoSend {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        1
    }

    fn send_request(
        &mut self,
        _: ::http::Request<wasmtime_wasi_http::WasiBody>,
        _: Option<wasmtime_wasi_http::RequestOptions>,
        _: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        ::http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}
