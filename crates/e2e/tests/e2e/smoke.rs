//! The basic path: register, log in, a direct conversation, a message acked and delivered
//! live to the other member over real sockets.

use std::collections::BTreeMap;

use natter_proto::EntryBody;
use natter_testkit::TestServer;

#[tokio::test]
async fn message_is_acked_and_delivered_live() {
    let server = TestServer::start().await;
    let (alice, bob, conv) = server.direct_pair().await;

    let mut a = server.ws(&alice).await;
    let mut b = server.ws(&bob).await;
    a.sync(BTreeMap::new()).await;
    let synced = b.sync(BTreeMap::new()).await;
    assert_eq!(synced.len(), 1);
    assert_eq!(synced[0].entries[0].seq, 1);

    let ack = a.send_msg(conv, "m1", "hello bob").await;
    assert_eq!(ack.seq, 2);
    let got = b.next_entry().await;
    assert_eq!(got.seq, 2);
    assert!(matches!(got.body, EntryBody::Message { ref body, .. } if body == "hello bob"));
    // The sender's own session gets it too, once.
    assert_eq!(a.next_entry().await.seq, 2);
    server.stop().await;
}
