//! REST calls of accounts, blocks, reports, group moderation and server administration
//! (issue 13): more of [`Api`], kept apart from the conversation calls.

use natter_proto::rest::{
    AdminUsers, AuditLog, Ban, Blocks, ChangePassword, Devices, DigestsSetting, EmailUpdate,
    GroupSettings, Mute, MuteNotifications, NewPushRegistration, NewReport, PushConfig,
    PushRegistration, PushRegistrations, ReportId, ReportStatus, Reports, ResolveReport, Suspend,
    Suspended,
};
use natter_proto::{Ack, ConversationId, DeviceId, Seq, UserId};
use reqwest::Method;

use crate::Api;
use crate::error::{Error, Result};

impl Api {
    // ---- account ----

    /// `GET /v1/me/devices`: your logins with their last use, and which one is this.
    pub async fn devices(&self) -> Result<Devices> {
        self.call(Method::GET, "/v1/me/devices", &[], None::<&()>).await
    }

    /// `DELETE /v1/me/devices/{id}`: that login ends on every node.
    pub async fn revoke_device(&self, device: DeviceId) -> Result<()> {
        self.call_empty(Method::DELETE, &format!("/v1/me/devices/{}", device.0), None::<&()>).await
    }

    /// `PUT /v1/me/password`: every other login of the account ends.
    pub async fn change_password(&self, current: &str, new: &str) -> Result<()> {
        let body = ChangePassword { current_password: current.into(), new_password: new.into() };
        self.call_empty(Method::PUT, "/v1/me/password", Some(&body)).await
    }

    /// `GET /v1/me/export`: your data as one JSON archive.
    pub async fn export_data(&self) -> Result<serde_json::Value> {
        self.call(Method::GET, "/v1/me/export", &[], None::<&()>).await
    }

    // ---- push notifications ----

    /// `PUT /v1/me/email`: an address for email digests (mailed a link to verify it), or
    /// `None` to remove it.
    pub async fn set_email(&self, email: Option<&str>) -> Result<()> {
        let body = EmailUpdate { email: email.map(str::to_owned) };
        self.call_empty(Method::PUT, "/v1/me/email", Some(&body)).await
    }

    /// `PUT /v1/me/email/digests`: digests to the verified address on or off.
    pub async fn set_digests(&self, on: bool) -> Result<()> {
        self.call_empty(Method::PUT, "/v1/me/email/digests", Some(&DigestsSetting { on })).await
    }

    /// `GET /v1/push/config`: the providers this server pushes through and its VAPID key.
    pub async fn push_config(&self) -> Result<PushConfig> {
        self.call(Method::GET, "/v1/push/config", &[], None::<&()>).await
    }

    /// `POST /v1/me/push`: this device's push registration; its id.
    pub async fn register_push(&self, registration: &NewPushRegistration) -> Result<i64> {
        let res: ReportId = self.call(Method::POST, "/v1/me/push", &[], Some(registration)).await?;
        Ok(res.id)
    }

    /// `GET /v1/me/push`.
    pub async fn push_registrations(&self) -> Result<Vec<PushRegistration>> {
        let res: PushRegistrations =
            self.call(Method::GET, "/v1/me/push", &[], None::<&()>).await?;
        Ok(res.registrations)
    }

    /// `DELETE /v1/me/push/{id}`.
    pub async fn unregister_push(&self, id: i64) -> Result<()> {
        self.call_empty(Method::DELETE, &format!("/v1/me/push/{id}"), None::<&()>).await
    }

    /// `PUT /v1/conversations/{id}/notifications` (`conv`) or `PUT /v1/me/notifications`
    /// (do not disturb): muted until `mute.until`, forever, or (neither) no more.
    pub async fn mute_notifications(
        &self,
        conv: Option<ConversationId>,
        mute: &MuteNotifications,
    ) -> Result<()> {
        let path = match conv {
            Some(conv) => format!("/v1/conversations/{conv}/notifications"),
            None => "/v1/me/notifications".to_owned(),
        };
        self.call_empty(Method::PUT, &path, Some(mute)).await
    }

    // ---- blocks ----

    /// `GET /v1/me/blocks`: whom you block, by id.
    pub async fn blocks(&self) -> Result<Vec<UserId>> {
        let res: Blocks = self.call(Method::GET, "/v1/me/blocks", &[], None::<&()>).await?;
        Ok(res.blocked)
    }

    /// `PUT /v1/me/blocks/{user}`; your sessions get [`crate::Event::Blocks`].
    pub async fn block(&self, user: UserId) -> Result<()> {
        self.call_empty(Method::PUT, &format!("/v1/me/blocks/{}", user.0), None::<&()>).await
    }

    /// `DELETE /v1/me/blocks/{user}`.
    pub async fn unblock(&self, user: UserId) -> Result<()> {
        self.call_empty(Method::DELETE, &format!("/v1/me/blocks/{}", user.0), None::<&()>).await
    }

    // ---- reports ----

    /// `POST /v1/reports` of a message; the report's id.
    pub async fn report_message(
        &self,
        conv: ConversationId,
        seq: Seq,
        reason: &str,
    ) -> Result<i64> {
        let body = NewReport {
            conversation: Some(conv),
            seq: Some(seq),
            user: None,
            reason: reason.into(),
        };
        let res: ReportId = self.call(Method::POST, "/v1/reports", &[], Some(&body)).await?;
        Ok(res.id)
    }

    /// `POST /v1/reports` of a user; the report's id.
    pub async fn report_user(&self, user: UserId, reason: &str) -> Result<i64> {
        let body =
            NewReport { conversation: None, seq: None, user: Some(user), reason: reason.into() };
        let res: ReportId = self.call(Method::POST, "/v1/reports", &[], Some(&body)).await?;
        Ok(res.id)
    }

    // ---- group moderation (owner and admins) ----

    /// `PUT /v1/conversations/{id}/settings`: slow mode (0: off) and lock.
    pub async fn set_group_settings(
        &self,
        conv: ConversationId,
        settings: &GroupSettings,
    ) -> Result<Ack> {
        self.call(Method::PUT, &format!("/v1/conversations/{conv}/settings"), &[], Some(settings))
            .await
    }

    /// `PUT /v1/conversations/{id}/members/{user}/mute` for `for_secs`.
    pub async fn mute(&self, conv: ConversationId, user: UserId, for_secs: u64) -> Result<Ack> {
        let path = format!("/v1/conversations/{conv}/members/{}/mute", user.0);
        self.call(Method::PUT, &path, &[], Some(&Mute { for_secs })).await
    }

    /// `DELETE /v1/conversations/{id}/members/{user}/mute`.
    pub async fn unmute(&self, conv: ConversationId, user: UserId) -> Result<Ack> {
        let path = format!("/v1/conversations/{conv}/members/{}/mute", user.0);
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `PUT /v1/conversations/{id}/bans/{user}`: removed and banned.
    pub async fn ban(&self, conv: ConversationId, user: UserId) -> Result<Ack> {
        let path = format!("/v1/conversations/{conv}/bans/{}", user.0);
        self.call(Method::PUT, &path, &[], None::<&()>).await
    }

    /// `DELETE /v1/conversations/{id}/bans/{user}`.
    pub async fn unban(&self, conv: ConversationId, user: UserId) -> Result<()> {
        let path = format!("/v1/conversations/{conv}/bans/{}", user.0);
        self.call_empty(Method::DELETE, &path, None::<&()>).await
    }

    /// `GET /v1/conversations/{id}/bans`.
    pub async fn bans(&self, conv: ConversationId) -> Result<Vec<Ban>> {
        self.call(Method::GET, &format!("/v1/conversations/{conv}/bans"), &[], None::<&()>).await
    }

    // ---- server administration (administrators only) ----

    /// `GET /v1/admin/users`, optionally by handle or name prefix, after a user id.
    pub async fn admin_users(
        &self,
        prefix: Option<&str>,
        after: Option<UserId>,
    ) -> Result<AdminUsers> {
        let mut query = Vec::new();
        if let Some(q) = prefix {
            query.push(("q", q.to_owned()));
        }
        if let Some(after) = after {
            query.push(("after", after.0.to_string()));
        }
        self.call(Method::GET, "/v1/admin/users", &query, None::<&()>).await
    }

    /// `POST /v1/admin/users/{id}/suspend`: for `suspend.for_secs`, or a ban.
    pub async fn suspend(&self, user: UserId, suspend: &Suspend) -> Result<Suspended> {
        let path = format!("/v1/admin/users/{}/suspend", user.0);
        self.call(Method::POST, &path, &[], Some(suspend)).await
    }

    /// `POST /v1/admin/users/{id}/restore`.
    pub async fn restore(&self, user: UserId) -> Result<()> {
        self.call_empty(Method::POST, &format!("/v1/admin/users/{}/restore", user.0), None::<&()>)
            .await
    }

    /// `DELETE /v1/admin/conversations/{id}/entries/{seq}`: removes any message.
    pub async fn remove_message(&self, conv: ConversationId, seq: Seq) -> Result<Ack> {
        let path = format!("/v1/admin/conversations/{conv}/entries/{seq}");
        self.call(Method::DELETE, &path, &[], None::<&()>).await
    }

    /// `GET /v1/admin/reports`: `status` `None` for all, newest first, before `before`.
    pub async fn reports(
        &self,
        status: Option<ReportStatus>,
        before: Option<i64>,
    ) -> Result<Reports> {
        let mut query = vec![("status", status.map_or("all", ReportStatus::as_str).to_owned())];
        if let Some(before) = before {
            query.push(("before", before.to_string()));
        }
        self.call(Method::GET, "/v1/admin/reports", &query, None::<&()>).await
    }

    /// `POST /v1/admin/reports/{id}/resolve`.
    pub async fn resolve_report(
        &self,
        id: i64,
        status: ReportStatus,
        note: Option<&str>,
    ) -> Result<()> {
        if status == ReportStatus::Open {
            return Err(Error::Protocol("a report is resolved or dismissed".into()));
        }
        let body = ResolveReport { status, note: note.map(str::to_owned) };
        self.call_empty(Method::POST, &format!("/v1/admin/reports/{id}/resolve"), Some(&body)).await
    }

    /// `GET /v1/admin/audit`, newest first, before `before`.
    pub async fn audit_log(&self, before: Option<i64>) -> Result<AuditLog> {
        let query: Vec<(&str, String)> =
            before.map(|b| ("before", b.to_string())).into_iter().collect();
        self.call(Method::GET, "/v1/admin/audit", &query, None::<&()>).await
    }
}
