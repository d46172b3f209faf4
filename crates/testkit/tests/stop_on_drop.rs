//! The kit's own promise: a dropped node stops. (The binary's counterpart, killed on drop,
//! is in natter-server's crash test, where cargo provides the binary.)

use natter_testkit::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_in_process_server_stops_and_tells_its_sessions() {
    let server = TestServer::start().await;
    let alice = server.user("alice").await;
    let mut ws = server.ws(&alice).await;
    let addr = server.addr;
    drop(server);
    let frame = ws.closed().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 1012, "a graceful stop tells sessions to reconnect");
    natter_testkit::poll_until(
        "the listener to close",
        || async { tokio::net::TcpStream::connect(addr).await.is_err().then_some(()) },
        String::new,
    )
    .await;
}
