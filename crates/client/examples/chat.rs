//! A terminal chat with one peer, on the Natter SDK.
//!
//! ```text
//! cargo run -p natter-server --bin natter -- serve            # in one terminal
//! cargo run -p natter-client --example chat -- --server http://127.0.0.1:8080 \
//!     --handle alice --password 'correct horse battery' --register --peer bob
//! cargo run -p natter-client --example chat -- --server http://127.0.0.1:8080 \
//!     --handle bob --password 'correct horse battery' --register --peer alice
//! ```
//!
//! Each line typed is sent to the peer; incoming messages are printed and marked read.
//! `--state FILE` keeps cursors and unsent messages in a file, so a restarted chat resumes
//! where it stopped and sends what it could not. End with Ctrl-D (after the last ack) or
//! `/quit`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use natter_client::proto::{Entry, EntryBody, UserId};
use natter_client::{Api, Client, Config, ConnectionState, Event, FileStore};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(about = "Chat with one peer over a Natter server")]
struct Args {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Your handle.
    #[arg(long)]
    handle: String,
    /// Your password.
    #[arg(long, env = "NATTER_PASSWORD")]
    password: String,
    /// Create the account first if it does not exist.
    #[arg(long)]
    register: bool,
    /// The handle to chat with.
    #[arg(long)]
    peer: String,
    /// Keep cursors and unsent messages in this file (resume after a restart).
    #[arg(long)]
    state: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let api = Api::new(&args.server)?;
    let device = Some("chat example");
    let session = if args.register {
        api.register_or_login(&args.handle, &args.password, device).await
    } else {
        api.login(&args.handle, &args.password, device).await
    }
    .context("logging in")?;
    let api = api.with_token(&session.token);
    let peer = api.user(&args.peer).await.with_context(|| format!("looking up {}", args.peer))?;
    let conv = api.create_direct(peer.user_id).await.context("opening the conversation")?.id;
    let names: HashMap<UserId, String> =
        [(session.user_id, args.handle.clone()), (peer.user_id, args.peer.clone())].into();

    let mut config = Config::new(&args.server, &session.token);
    if let Some(path) = &args.state {
        config.store = Arc::new(FileStore::new(path));
    }
    let (client, mut events) = Client::connect(config).await?;
    let mut lines = stdin_lines();
    let mut unacked = HashSet::new();
    let mut quitting = false;
    let mut peer_read = 0;
    println!("* chatting with {} in conversation {conv}; /quit to leave", args.peer);

    while !(quitting && unacked.is_empty()) {
        tokio::select! {
            line = lines.recv(), if !quitting => match line.as_deref() {
                None | Some("/quit") => quitting = true,
                Some("") => {}
                Some(text) => {
                    unacked.insert(client.send_nowait(conv, text).await?);
                }
            },
            event = events.next() => {
                let Some(event) = event else { break };
                match event {
                    Event::Entry(entry) => {
                        print_entry(&entry, &names);
                        if entry.conversation == conv && entry.sender != session.user_id {
                            client.read(conv, entry.seq).await?;
                        }
                    }
                    Event::Acked(ack) => {
                        if let Some(id) = &ack.client_msg_id {
                            unacked.remove(id);
                        }
                    }
                    Event::SendFailed { client_msg_id, error, .. } => {
                        unacked.remove(&client_msg_id);
                        println!("* not sent: {:?}: {}", error.code, error.message);
                    }
                    Event::Typing { user, typing: true, .. } if user == peer.user_id => {
                        println!("* {} is typing…", args.peer);
                    }
                    Event::Receipt(r)
                        if r.user == peer.user_id && r.conversation == conv
                            && r.read_seq > peer_read =>
                    {
                        peer_read = r.read_seq;
                        println!("* {} has read up to #{peer_read}", args.peer);
                    }
                    Event::Connection(state) => print_state(&state),
                    _ => {}
                }
            }
        }
    }
    client.close().await?;
    Ok(())
}

/// Lines from stdin, read on a plain thread (stdin is blocking); `None` at the end.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    rx
}

fn print_entry(entry: &Entry, names: &HashMap<UserId, String>) {
    let who = names.get(&entry.sender).cloned().unwrap_or_else(|| format!("user {}", entry.sender));
    let what = match &entry.body {
        EntryBody::Message { body, .. } => body.clone(),
        EntryBody::Edit { target, body } => format!("(edited #{target}) {body}"),
        EntryBody::Delete { target } => format!("(deleted #{target})"),
        EntryBody::Reaction { target, emoji, remove } => {
            format!("({} {emoji} on #{target})", if *remove { "took back" } else { "reacted" })
        }
        EntryBody::Created { .. } => "(started the conversation)".to_owned(),
        other => format!("({other:?})"),
    };
    println!("[{}#{}] {who}: {what}", entry.conversation, entry.seq);
}

fn print_state(state: &ConnectionState) {
    match state {
        ConnectionState::Connected { .. } => println!("* connected"),
        ConnectionState::Disconnected { reason, retry_in } => {
            println!("* disconnected ({reason}); retrying in {retry_in:?}");
        }
        ConnectionState::Closed { reason } => println!("* closed ({reason:?})"),
        _ => {}
    }
}
