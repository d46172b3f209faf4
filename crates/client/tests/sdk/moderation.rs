//! The SDK's account, block, report, group-moderation and administration calls (issue 13)
//! against a real node: the block list reaches the blocker's live client as an event and
//! the blocked user's sends into their direct conversation fail; a muted member's send
//! fails with `muted`; a report reaches an administrator's queue and is resolved; the
//! archive export and the audit log read back.

use std::sync::Arc;

use crate::support::*;
use natter_client::proto::ErrorCode;
use natter_client::proto::rest::{GroupSettings, ReportStatus, Suspend};
use natter_client::{Api, Event, MemoryStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_moderation_reports_and_administration_through_the_sdk() {
    let node = start_node().await;
    let url = node.base_url();
    let (alice_id, alice_token) = account(&url, "alice").await;
    let (bob_id, bob_token) = account(&url, "bob").await;
    let (root_id, root_token) = account(&url, "root").await;
    node.grant_admin("root").await;
    let api = Api::new(&url).expect("url");
    let (alice_api, bob_api, root_api) =
        (api.with_token(&alice_token), api.with_token(&bob_token), api.with_token(&root_token));
    let direct = alice_api.create_direct(bob_id).await.expect("direct").id;
    let group = alice_api.create_group("club", &[bob_id]).await.expect("group").conversation.id;

    let (alice, mut a_events) =
        connect(config(&url, &alice_token, Arc::new(MemoryStore::new()))).await;
    let (bob, mut b_events) = connect(config(&url, &bob_token, Arc::new(MemoryStore::new()))).await;
    let (mut a_seen, mut b_seen) = (Vec::new(), Vec::new());
    wait_connected(&mut a_events, &mut a_seen).await;
    wait_connected(&mut b_events, &mut b_seen).await;

    // A block: alice's client hears her list; bob's sends into their chat fail.
    alice_api.block(bob_id).await.expect("block");
    let list = wait_for(&mut a_events, &mut a_seen, "the block list", |e| match e {
        Event::Blocks(list) => Some(list.clone()),
        _ => None,
    })
    .await;
    assert_eq!(list, vec![bob_id]);
    assert_eq!(alice_api.blocks().await.expect("blocks"), vec![bob_id]);
    let refused = bob.send(direct, "hello?").await.expect_err("blocked");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden));
    alice_api.unblock(bob_id).await.expect("unblock");
    bob.send(direct, "friends again").await.expect("send");

    // Group moderation: slow mode and a mute, read back, then lifted.
    alice_api
        .set_group_settings(group, &GroupSettings { slow_mode_secs: 0, locked: true })
        .await
        .expect("lock");
    let refused = bob.send(group, "may I?").await.expect_err("locked");
    assert_eq!(refused.code(), Some(ErrorCode::Forbidden));
    alice_api.set_group_settings(group, &GroupSettings::default()).await.expect("unlock");
    alice_api.mute(group, bob_id, 600).await.expect("mute");
    let refused = bob.send(group, "and now?").await.expect_err("muted");
    assert_eq!(refused.code(), Some(ErrorCode::Muted));
    alice_api.unmute(group, bob_id).await.expect("unmute");
    let said = bob.send(group, "thanks").await.expect("send");
    alice_api.ban(group, bob_id).await.expect("ban");
    assert_eq!(alice_api.bans(group).await.expect("bans")[0].user_id, bob_id);
    alice_api.unban(group, bob_id).await.expect("unban");
    assert!(alice_api.bans(group).await.expect("bans").is_empty());

    // A report, the queue, its resolution, the audit log; a non-admin is told nothing.
    let id = alice_api.report_message(group, said.seq, "rude").await.expect("report");
    alice_api.report_user(bob_id, "spam").await.expect("report a user");
    assert_eq!(
        bob_api.reports(None, None).await.expect_err("not an admin").code(),
        Some(ErrorCode::NotFound)
    );
    let queue = root_api.reports(Some(ReportStatus::Open), None).await.expect("queue");
    assert_eq!(queue.reports.len(), 2);
    let filed = queue.reports.iter().find(|r| r.id == id).expect("the message report");
    assert_eq!(filed.snapshot["body"], "thanks");
    root_api.resolve_report(id, ReportStatus::Dismissed, Some("fine")).await.expect("resolve");
    let users = root_api.admin_users(Some("bo"), None).await.expect("users");
    assert_eq!(users.users[0].user.user_id, bob_id);
    let done = root_api
        .suspend(
            bob_id,
            &Suspend { for_secs: Some(60), reason: "cool off".into(), remove_messages: false },
        )
        .await
        .expect("suspend");
    assert_eq!(done.devices, 1, "the one login bob's client used");
    root_api.restore(bob_id).await.expect("restore");
    let audit = root_api.audit_log(None).await.expect("audit");
    let actions: Vec<&str> = audit.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["restore", "suspend", "dismiss_report", "grant_admin"]);
    assert_eq!(audit.entries[0].actor, Some(root_id));

    // The archive, and account calls.
    let archive = alice_api.export_data().await.expect("export");
    assert_eq!(archive["format"], "natter-export/1");
    assert_eq!(archive["user"]["user_id"], alice_id.0);
    let devices = alice_api.devices().await.expect("devices");
    assert_eq!(devices.devices.len(), 1);
    // Push registrations need a provider the server enabled: this node has none.
    let push = natter_client::proto::rest::NewPushRegistration {
        provider: "webhook".into(),
        token: "t".into(),
        p256dh: None,
        auth: None,
    };
    let refused = alice_api.register_push(&push).await.expect_err("no provider");
    assert_eq!(refused.code(), Some(ErrorCode::BadRequest));
    assert!(alice_api.push_registrations().await.expect("list").is_empty());
    let forever = natter_client::proto::rest::MuteNotifications { until: None, forever: true };
    alice_api.mute_notifications(Some(group), &forever).await.expect("mute");
    alice_api.mute_notifications(None, &Default::default()).await.expect("dnd off");
    drop(alice);
}
