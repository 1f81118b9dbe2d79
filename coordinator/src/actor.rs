//! The `Coordinator` actor (ractor): the thin shell around [`CoordinatorCore`]. It owns the core and
//! its collaborators — the links to member workers (in-process or TCP), the store (behind a group committer on its own thread)
//! and the clock — feeds the core one event at a time and carries out the commands it returns, in
//! order. Everything slow happens elsewhere: worker calls and timers are tokio tasks that post
//! their result back as an event; store commits run on the committer's thread and post `Stored`.
//!
//! Supervision: a panic inside the core is caught, logged with the ids involved, and the request
//! that caused it fails with category `server`; a panic in a worker-call task is reported back as
//! `Event::Panicked` for that call, so its futures fail instead of hanging. The service goes on.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use runtime::clock::Clock;
use runtime::control::WorkerLink;
use tokio::sync::oneshot;

use crate::core::api::{ApiRequest, Reply, ReplyTo};
use crate::core::engine::{Command, CoordinatorCore, Event, Generation, WorkerId};
use crate::core::ids::TenantId;
use crate::core::workers::WorkerCapacity;
use crate::error::CoordinatorError;
use crate::metrics::Metrics;
use crate::store::{GroupCommitter, StoreOp};

/// Messages of the coordinator actor.
pub enum CoordinatorMsg {
    /// An API request from an HTTP handler, with where its answer goes.
    Api { tenant: TenantId, request: Box<ApiRequest>, reply: oneshot::Sender<Reply> },
    /// A worker reply, timer, store result or failure report from one of the shell's tasks.
    Event(Event),
    /// A worker finished its handshake (and holds its lease): the core admits it, and its
    /// generation goes back through `admitted` (the handshake's Welcome).
    WorkerUp {
        worker: WorkerId,
        name: String,
        capacity: WorkerCapacity,
        link: Arc<dyn WorkerLink>,
        admitted: oneshot::Sender<Generation>,
    },
}

pub struct CoordinatorActor;

/// What the actor starts from.
pub struct ShellArgs {
    pub core: CoordinatorCore,
    pub store: GroupCommitter,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

pub struct Shell {
    core: CoordinatorCore,
    /// Links of member workers (and of workers waiting to be admitted).
    links: HashMap<WorkerId, Arc<dyn WorkerLink>>,
    admitting: HashMap<WorkerId, oneshot::Sender<Generation>>,
    store: GroupCommitter,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    waiting: HashMap<ReplyTo, oneshot::Sender<Reply>>,
    next_reply: u64,
}

impl Actor for CoordinatorActor {
    type Msg = CoordinatorMsg;
    type State = Shell;
    type Arguments = ShellArgs;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, args: ShellArgs) -> Result<Shell, ActorProcessingErr> {
        let shell = Shell {
            core: args.core,
            links: HashMap::new(),
            admitting: HashMap::new(),
            store: args.store,
            clock: args.clock,
            metrics: args.metrics,
            waiting: HashMap::new(),
            next_reply: 1,
        };
        Ok(shell)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        shell: &mut Shell,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CoordinatorMsg::Api { tenant, request, reply } => {
                let to = ReplyTo(shell.next_reply);
                shell.next_reply += 1;
                shell.waiting.insert(to, reply);
                let (session, run, sampler, request_id) = request.named_ids();
                tracing::info!(
                    tenant = %tenant,
                    request = %request_kind(&request),
                    session = session.unwrap_or(""),
                    run = run.unwrap_or(""),
                    sampler = sampler.unwrap_or(""),
                    request_id = request_id.unwrap_or(""),
                    reply_to = to.0,
                    "api request"
                );
                shell.feed(&myself, Event::Api { reply: to, tenant, request: *request }, Some(to));
            }
            CoordinatorMsg::Event(event) => shell.feed(&myself, event, None),
            CoordinatorMsg::WorkerUp { worker, name, capacity, link, admitted } => {
                tracing::info!(worker = worker.0, name = %name, device = %capacity.device, "worker joined");
                shell.links.insert(worker, link);
                shell.admitting.insert(worker, admitted);
                shell.feed(&myself, Event::WorkerJoined { worker, name, capacity }, None);
            }
        }
        shell.metrics.set_workers(shell.core.workers().len());
        Ok(())
    }
}

/// The variant name of a value's Debug form, without formatting the rest (a request can hold
/// megabytes of tokens).
fn variant_name<T: std::fmt::Debug>(value: &T) -> String {
    use std::fmt::Write;
    /// Stops at the first character after the variant's name.
    struct Head(String, bool);
    impl Write for Head {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            if self.1 {
                return Err(std::fmt::Error);
            }
            match s.find([' ', '{', '(']) {
                Some(i) => {
                    self.0.push_str(&s[..i]);
                    self.1 = true;
                    Err(std::fmt::Error)
                }
                None => {
                    self.0.push_str(s);
                    Ok(())
                }
            }
        }
    }
    let mut head = Head(String::new(), false);
    let _ = write!(head, "{value:?}");
    head.0
}

fn body_kind(b: &runtime::control::ToWorker) -> String {
    variant_name(b)
}

/// A short description of an event for log lines: its kind and the ids it names.
fn describe(event: &Event) -> String {
    match event {
        Event::Api { reply, tenant, request } => {
            let (session, run, sampler, request_id) = request.named_ids();
            format!(
                "api {} tenant={tenant} session={} run={} sampler={} request={} reply_to={}",
                request_kind(request),
                session.unwrap_or(""),
                run.unwrap_or(""),
                sampler.unwrap_or(""),
                request_id.unwrap_or(""),
                reply.0
            )
        }
        Event::WorkerReplied { call, generation, reply } => {
            format!("worker reply {} call={} generation={}", variant_name(reply), call.0, generation.0)
        }
        other => variant_name(other),
    }
}

/// A short name of a request for log lines (the full body may hold megabytes of tokens).
fn request_kind(r: &ApiRequest) -> String {
    variant_name(r)
}

impl Shell {
    /// Runs one event through the core (catching a panic) and executes its commands.
    fn feed(&mut self, myself: &ActorRef<CoordinatorMsg>, event: Event, reply: Option<ReplyTo>) {
        let now = self.clock.now_ms();
        let what = describe(&event);
        let core = &mut self.core;
        let commands = match catch_unwind(AssertUnwindSafe(|| core.on_event(now, event))) {
            Ok(commands) => commands,
            Err(payload) => {
                let why = panic_text(payload.as_ref());
                tracing::error!(event = %what, panic = %why, "the coordinator core panicked; the request fails as a server error");
                let failed = Event::Panicked { reply, call: None, what: why };
                self.core.on_event(now, failed)
            }
        };
        for c in commands {
            self.execute(myself, c);
        }
    }

    fn execute(&mut self, myself: &ActorRef<CoordinatorMsg>, command: Command) {
        match command {
            Command::Reply { to, reply } => {
                match &reply {
                    Err(e) => tracing::info!(reply_to = to.0, error = %e, "api error"),
                    Ok(crate::core::api::Answer::Json(v)) => {
                        let request_id = v.get("request_id").and_then(|r| r.as_str()).unwrap_or("");
                        let run = v.get("model_id").and_then(|r| r.as_str()).unwrap_or("");
                        tracing::debug!(reply_to = to.0, request_id, run, "api reply");
                    }
                    Ok(_) => tracing::debug!(reply_to = to.0, "api reply"),
                }
                if let Some(tx) = self.waiting.remove(&to) {
                    // The client may have disconnected; nothing to do then.
                    let _ = tx.send(reply);
                }
            }
            Command::Admit { worker, generation } => {
                tracing::info!(worker = worker.0, generation = generation.0, "worker admitted");
                if let Some(tx) = self.admitting.remove(&worker) {
                    // The handshake may have given up meanwhile; its connection then closes.
                    let _ = tx.send(generation);
                }
            }
            Command::Disconnect { worker } => {
                tracing::warn!(worker = worker.0, "worker lost; its link is dropped");
                self.links.remove(&worker);
                self.admitting.remove(&worker);
            }
            Command::Send { call, worker, envelope } => {
                let generation = Generation(envelope.generation);
                tracing::debug!(call = call.0, worker = worker.0, generation = generation.0, body = %body_kind(&envelope.body), "to worker");
                let Some(link) = self.links.get(&worker) else {
                    // The core only sends to members, and members have links; be loud if not.
                    tracing::error!(
                        call = call.0,
                        worker = worker.0,
                        "no link to a member worker; this is a lathe bug"
                    );
                    let event = Event::Panicked {
                        reply: None,
                        call: Some(call),
                        what: format!("no link to worker {}", worker.0),
                    };
                    let _ = myself.send_message(CoordinatorMsg::Event(event));
                    return;
                };
                let task = link.call(envelope);
                let me = myself.clone();
                let handle = tokio::spawn(task);
                tokio::spawn(async move {
                    let event = match handle.await {
                        Ok(reply) => Event::WorkerReplied { call, generation, reply },
                        Err(e) => {
                            tracing::error!(call = call.0, worker = worker.0, error = %e, "a worker call task failed");
                            Event::Panicked { reply: None, call: Some(call), what: e.to_string() }
                        }
                    };
                    let _ = me.send_message(CoordinatorMsg::Event(event));
                });
            }
            Command::Persist { ticket, ops } => {
                let me = myself.clone();
                self.store.submit(
                    ops,
                    Box::new(move |result| {
                        if let Err(e) = &result {
                            tracing::error!(ticket = ticket.0, error = %e, "store commit failed");
                        }
                        let result = result.map_err(|e| e.to_string());
                        let _ = me.send_message(CoordinatorMsg::Event(Event::Stored { ticket, result }));
                    }),
                );
            }
            Command::ArmTimer { at_ms, timer } => {
                let delay = Duration::from_millis(at_ms.saturating_sub(self.clock.now_ms()));
                let me = myself.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = me.send_message(CoordinatorMsg::Event(Event::Timer(timer)));
                });
            }
            Command::RemoveDir { dir } => match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "could not remove a directory"),
            },
        }
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string())
}

/// Sends a request to the actor and waits for the core's answer.
pub async fn ask(actor: &ActorRef<CoordinatorMsg>, tenant: TenantId, request: ApiRequest) -> Reply {
    let (tx, rx) = oneshot::channel();
    let msg = CoordinatorMsg::Api { tenant, request: Box::new(request), reply: tx };
    if actor.send_message(msg).is_err() {
        return Err(CoordinatorError::Internal("the coordinator has stopped; restart `lathe serve`".into()));
    }
    rx.await.unwrap_or_else(|_| {
        Err(CoordinatorError::Internal(
            "the coordinator dropped this request; this is a lathe bug, please report it".into(),
        ))
    })
}

/// Durable ops at start (before the actor runs), e.g. the new placement generation.
pub fn meta_op(key: &str, value: String) -> StoreOp {
    StoreOp::PutMeta { key: key.to_string(), value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_names_stop_before_the_fields() {
        assert_eq!(variant_name(&ApiRequest::CreateSession), "CreateSession");
        assert_eq!(variant_name(&ApiRequest::GetRun { run: "r".repeat(1000) }), "GetRun");
        assert_eq!(variant_name(&runtime::control::ToWorker::Memory), "Memory");
        let e = Event::Stored { ticket: crate::core::engine::Ticket(3), result: Ok(()) };
        assert_eq!(describe(&e), "Stored");
    }
}
