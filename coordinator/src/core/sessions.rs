//! `Sessions`: client sessions and what they own. A session lives while heartbeats arrive; after
//! [`SESSION_EXPIRY_MS`] without one it expires, and a finished or expired session answers later
//! heartbeats with 410 and refuses new work. Ending a session hands back the training runs and
//! samplers whose in-memory state must be dropped (their checkpoints stay). Expiry is a pure
//! function of the `now_ms` passed in.

use std::collections::BTreeMap;

use super::ids::{RunId, SamplerId, SessionId, TenantId};

/// A session expires after this long without a heartbeat (the SDK beats every 10 s).
pub const SESSION_EXPIRY_MS: u64 = 300_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Active,
    /// The client called `/sessions/{id}/finish`.
    Finished,
    /// No heartbeat for [`SESSION_EXPIRY_MS`], or the coordinator restarted (in-memory state is gone).
    Expired,
}

#[derive(Debug)]
struct Session {
    tenant: TenantId,
    created_ms: u64,
    last_heartbeat_ms: u64,
    state: SessionState,
    runs: Vec<RunId>,
    samplers: Vec<SamplerId>,
}

/// Why a session operation was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionRefusal {
    /// No such session for this tenant.
    Unknown,
    /// The session finished or expired.
    Gone(SessionState),
}

/// What an ending session leaves to clean up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ended {
    pub session_id: Option<SessionId>,
    pub runs: Vec<RunId>,
    pub samplers: Vec<SamplerId>,
}

#[derive(Debug, Default)]
pub struct Sessions {
    next: u64,
    by_id: BTreeMap<SessionId, Session>,
}

impl Sessions {
    pub fn new() -> Self {
        Sessions { next: 1, by_id: BTreeMap::new() }
    }

    /// Creates an active session for `tenant`; its first heartbeat deadline starts now.
    pub fn create(&mut self, tenant: &TenantId, now_ms: u64) -> SessionId {
        let id = SessionId::new(format!("sess-{}", self.next)).unwrap_or_else(|_| unreachable!("sess-<n> is valid"));
        self.next += 1;
        self.insert(&id, tenant, now_ms, SessionState::Active);
        id
    }

    /// Re-adds a session known from before a restart. Its in-memory runs are gone, so it is expired.
    pub fn restore(&mut self, id: &SessionId, tenant: &TenantId, now_ms: u64) {
        if let Some(n) = id.as_str().strip_prefix("sess-").and_then(|n| n.parse::<u64>().ok()) {
            self.next = self.next.max(n + 1);
        }
        self.insert(id, tenant, now_ms, SessionState::Expired);
    }

    /// Re-adds a session recorded before a restart in the state it had. An active one gets a full
    /// expiry period from `now_ms`: its client's heartbeats resume once the server answers.
    pub fn restore_as(&mut self, id: &SessionId, tenant: &TenantId, created_ms: u64, state: SessionState, now_ms: u64) {
        if let Some(n) = id.as_str().strip_prefix("sess-").and_then(|n| n.parse::<u64>().ok()) {
            self.next = self.next.max(n + 1);
        }
        self.insert(id, tenant, now_ms, state);
        if let Some(s) = self.by_id.get_mut(id) {
            s.created_ms = created_ms;
        }
    }

    /// (tenant, created_ms, state) of a session, for persisting it.
    pub fn describe(&self, id: &str) -> Option<(TenantId, u64, SessionState)> {
        self.by_id.get(id).map(|s| (s.tenant.clone(), s.created_ms, s.state))
    }

    fn insert(&mut self, id: &SessionId, tenant: &TenantId, now_ms: u64, state: SessionState) {
        let session = Session {
            tenant: tenant.clone(),
            created_ms: now_ms,
            last_heartbeat_ms: now_ms,
            state,
            runs: vec![],
            samplers: vec![],
        };
        let previous = self.by_id.insert(id.clone(), session);
        assert!(previous.is_none(), "session id {id} allocated twice");
    }

    fn get_mut(&mut self, tenant: &TenantId, id: &str) -> Result<&mut Session, SessionRefusal> {
        match self.by_id.get_mut(id) {
            Some(s) if s.tenant == *tenant => Ok(s),
            _ => Err(SessionRefusal::Unknown),
        }
    }

    /// Ok when the session exists for `tenant` and is active (may take new work).
    pub fn check_active(&self, tenant: &TenantId, id: &str) -> Result<(), SessionRefusal> {
        match self.by_id.get(id) {
            Some(s) if s.tenant == *tenant && s.state == SessionState::Active => Ok(()),
            Some(s) if s.tenant == *tenant => Err(SessionRefusal::Gone(s.state)),
            _ => Err(SessionRefusal::Unknown),
        }
    }

    pub fn heartbeat(&mut self, tenant: &TenantId, id: &str, now_ms: u64) -> Result<(), SessionRefusal> {
        let s = self.get_mut(tenant, id)?;
        if s.state != SessionState::Active {
            return Err(SessionRefusal::Gone(s.state));
        }
        s.last_heartbeat_ms = s.last_heartbeat_ms.max(now_ms);
        Ok(())
    }

    /// Ends the session (first reason wins; finishing twice is fine and hands back nothing new).
    pub fn finish(&mut self, tenant: &TenantId, id: &str) -> Result<Ended, SessionRefusal> {
        let s = self.get_mut(tenant, id)?;
        let session_id = SessionId::new(id).ok();
        if s.state != SessionState::Active {
            return Ok(Ended { session_id, ..Ended::default() });
        }
        s.state = SessionState::Finished;
        Ok(Ended { session_id, runs: s.runs.clone(), samplers: s.samplers.clone() })
    }

    /// Records that `run` belongs to session `id` (dropped with it).
    pub fn add_run(&mut self, id: &SessionId, run: &RunId) {
        let s = self.by_id.get_mut(id).expect("runs are added to sessions that were checked active");
        s.runs.push(run.clone());
    }

    pub fn add_sampler(&mut self, id: &SessionId, sampler: &SamplerId) {
        let s = self.by_id.get_mut(id).expect("samplers are added to sessions that were checked active");
        s.samplers.push(sampler.clone());
    }

    /// Expires every active session whose last heartbeat is [`SESSION_EXPIRY_MS`] old or older.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Ended> {
        let mut ended = Vec::new();
        for (id, s) in self.by_id.iter_mut() {
            if s.state == SessionState::Active && now_ms.saturating_sub(s.last_heartbeat_ms) >= SESSION_EXPIRY_MS {
                s.state = SessionState::Expired;
                ended.push(Ended { session_id: Some(id.clone()), runs: s.runs.clone(), samplers: s.samplers.clone() });
            }
        }
        ended
    }

    pub fn state(&self, id: &str) -> Option<SessionState> {
        self.by_id.get(id).map(|s| s.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TenantId {
        TenantId::new(name).unwrap()
    }

    fn run(id: &str) -> RunId {
        RunId::new(id).unwrap()
    }

    #[test]
    fn a_session_expires_after_300_s_without_heartbeat_and_then_refuses_heartbeats() {
        let mut s = Sessions::new();
        let id = s.create(&t("alice"), 0);
        s.add_run(&id, &run(&format!("{id}:train:0")));
        assert!(s.expire(SESSION_EXPIRY_MS - 1).is_empty());
        let ended = s.expire(SESSION_EXPIRY_MS);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].runs, vec![run(&format!("{id}:train:0"))]);
        assert_eq!(
            s.heartbeat(&t("alice"), id.as_str(), SESSION_EXPIRY_MS + 1),
            Err(SessionRefusal::Gone(SessionState::Expired))
        );
        assert!(s.expire(10 * SESSION_EXPIRY_MS).is_empty(), "expiry is reported once");
    }

    #[test]
    fn heartbeats_push_expiry_back() {
        let mut s = Sessions::new();
        let id = s.create(&t("alice"), 0);
        s.heartbeat(&t("alice"), id.as_str(), 200_000).unwrap();
        assert!(s.expire(SESSION_EXPIRY_MS + 100_000).is_empty());
        assert_eq!(s.expire(SESSION_EXPIRY_MS + 200_000).len(), 1);
    }

    #[test]
    fn finishing_hands_back_runs_and_samplers_once_and_refuses_later_work() {
        let mut s = Sessions::new();
        let id = s.create(&t("alice"), 0);
        s.add_run(&id, &run("r"));
        s.add_sampler(&id, &SamplerId::new("smp").unwrap());
        let ended = s.finish(&t("alice"), id.as_str()).unwrap();
        assert_eq!((ended.runs, ended.samplers), (vec![run("r")], vec![SamplerId::new("smp").unwrap()]));
        assert_eq!(s.finish(&t("alice"), id.as_str()).unwrap().runs, Vec::<RunId>::new());
        assert_eq!(s.check_active(&t("alice"), id.as_str()), Err(SessionRefusal::Gone(SessionState::Finished)));
        assert!(s.expire(10 * SESSION_EXPIRY_MS).is_empty());
    }

    #[test]
    fn sessions_are_invisible_to_other_tenants() {
        let mut s = Sessions::new();
        let id = s.create(&t("alice"), 0);
        assert_eq!(s.heartbeat(&t("bob"), id.as_str(), 1), Err(SessionRefusal::Unknown));
        assert_eq!(s.finish(&t("bob"), id.as_str()), Err(SessionRefusal::Unknown));
        assert_eq!(s.check_active(&t("bob"), id.as_str()), Err(SessionRefusal::Unknown));
    }

    #[test]
    fn restored_sessions_are_expired_and_new_ids_do_not_collide() {
        let mut s = Sessions::new();
        s.restore(&SessionId::new("sess-7").unwrap(), &t("alice"), 0);
        assert_eq!(s.state("sess-7"), Some(SessionState::Expired));
        assert_eq!(s.create(&t("alice"), 0).as_str(), "sess-8");
    }
}
