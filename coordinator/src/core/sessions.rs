//! `Sessions`: client sessions and what they own. A session lives while heartbeats arrive; after
//! [`SESSION_EXPIRY_MS`] without one it expires, and a finished or expired session answers later
//! heartbeats with 410 and refuses new work. Ending a session hands back the training runs and
//! samplers whose in-memory state must be dropped (their checkpoints stay). Expiry is a pure
//! function of the `now_ms` passed in.

use std::collections::BTreeMap;

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
    tenant: String,
    created_ms: u64,
    last_heartbeat_ms: u64,
    state: SessionState,
    runs: Vec<String>,
    samplers: Vec<String>,
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
    pub session_id: String,
    pub runs: Vec<String>,
    pub samplers: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Sessions {
    next: u64,
    by_id: BTreeMap<String, Session>,
}

impl Sessions {
    pub fn new() -> Self {
        Sessions { next: 1, by_id: BTreeMap::new() }
    }

    /// Creates an active session for `tenant`; its first heartbeat deadline starts now.
    pub fn create(&mut self, tenant: &str, now_ms: u64) -> String {
        let id = format!("sess-{}", self.next);
        self.next += 1;
        self.insert(&id, tenant, now_ms, SessionState::Active);
        id
    }

    /// Re-adds a session known from before a restart. Its in-memory runs are gone, so it is expired.
    pub fn restore(&mut self, id: &str, tenant: &str, now_ms: u64) {
        if let Some(n) = id.strip_prefix("sess-").and_then(|n| n.parse::<u64>().ok()) {
            self.next = self.next.max(n + 1);
        }
        self.insert(id, tenant, now_ms, SessionState::Expired);
    }

    /// Re-adds a session recorded before a restart in the state it had. An active one gets a full
    /// expiry period from `now_ms`: its client's heartbeats resume once the server answers.
    pub fn restore_as(&mut self, id: &str, tenant: &str, created_ms: u64, state: SessionState, now_ms: u64) {
        if let Some(n) = id.strip_prefix("sess-").and_then(|n| n.parse::<u64>().ok()) {
            self.next = self.next.max(n + 1);
        }
        self.insert(id, tenant, now_ms, state);
        if let Some(s) = self.by_id.get_mut(id) {
            s.created_ms = created_ms;
        }
    }

    /// (tenant, created_ms, state) of a session, for persisting it.
    pub fn describe(&self, id: &str) -> Option<(String, u64, SessionState)> {
        self.by_id.get(id).map(|s| (s.tenant.clone(), s.created_ms, s.state))
    }

    fn insert(&mut self, id: &str, tenant: &str, now_ms: u64, state: SessionState) {
        let session = Session {
            tenant: tenant.to_string(),
            created_ms: now_ms,
            last_heartbeat_ms: now_ms,
            state,
            runs: vec![],
            samplers: vec![],
        };
        let previous = self.by_id.insert(id.to_string(), session);
        assert!(previous.is_none(), "session id {id} allocated twice");
    }

    fn get_mut(&mut self, tenant: &str, id: &str) -> Result<&mut Session, SessionRefusal> {
        match self.by_id.get_mut(id) {
            Some(s) if s.tenant == tenant => Ok(s),
            _ => Err(SessionRefusal::Unknown),
        }
    }

    /// Ok when the session exists for `tenant` and is active (may take new work).
    pub fn check_active(&self, tenant: &str, id: &str) -> Result<(), SessionRefusal> {
        match self.by_id.get(id) {
            Some(s) if s.tenant == tenant && s.state == SessionState::Active => Ok(()),
            Some(s) if s.tenant == tenant => Err(SessionRefusal::Gone(s.state)),
            _ => Err(SessionRefusal::Unknown),
        }
    }

    pub fn heartbeat(&mut self, tenant: &str, id: &str, now_ms: u64) -> Result<(), SessionRefusal> {
        let s = self.get_mut(tenant, id)?;
        if s.state != SessionState::Active {
            return Err(SessionRefusal::Gone(s.state));
        }
        s.last_heartbeat_ms = s.last_heartbeat_ms.max(now_ms);
        Ok(())
    }

    /// Ends the session (first reason wins; finishing twice is fine and hands back nothing new).
    pub fn finish(&mut self, tenant: &str, id: &str) -> Result<Ended, SessionRefusal> {
        let s = self.get_mut(tenant, id)?;
        if s.state != SessionState::Active {
            return Ok(Ended { session_id: id.to_string(), ..Ended::default() });
        }
        s.state = SessionState::Finished;
        Ok(Ended { session_id: id.to_string(), runs: s.runs.clone(), samplers: s.samplers.clone() })
    }

    /// Records that `run` belongs to session `id` (dropped with it).
    pub fn add_run(&mut self, id: &str, run: &str) {
        let s = self.by_id.get_mut(id).expect("runs are added to sessions that were checked active");
        s.runs.push(run.to_string());
    }

    pub fn add_sampler(&mut self, id: &str, sampler: &str) {
        let s = self.by_id.get_mut(id).expect("samplers are added to sessions that were checked active");
        s.samplers.push(sampler.to_string());
    }

    /// Expires every active session whose last heartbeat is [`SESSION_EXPIRY_MS`] old or older.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Ended> {
        let mut ended = Vec::new();
        for (id, s) in self.by_id.iter_mut() {
            if s.state == SessionState::Active && now_ms.saturating_sub(s.last_heartbeat_ms) >= SESSION_EXPIRY_MS {
                s.state = SessionState::Expired;
                ended.push(Ended { session_id: id.clone(), runs: s.runs.clone(), samplers: s.samplers.clone() });
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

    #[test]
    fn a_session_expires_after_300_s_without_heartbeat_and_then_refuses_heartbeats() {
        let mut s = Sessions::new();
        let id = s.create("alice", 0);
        s.add_run(&id, &format!("{id}:train:0"));
        assert!(s.expire(SESSION_EXPIRY_MS - 1).is_empty());
        let ended = s.expire(SESSION_EXPIRY_MS);
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].runs, vec![format!("{id}:train:0")]);
        assert_eq!(s.heartbeat("alice", &id, SESSION_EXPIRY_MS + 1), Err(SessionRefusal::Gone(SessionState::Expired)));
        assert!(s.expire(10 * SESSION_EXPIRY_MS).is_empty(), "expiry is reported once");
    }

    #[test]
    fn heartbeats_push_expiry_back() {
        let mut s = Sessions::new();
        let id = s.create("alice", 0);
        s.heartbeat("alice", &id, 200_000).unwrap();
        assert!(s.expire(SESSION_EXPIRY_MS + 100_000).is_empty());
        assert_eq!(s.expire(SESSION_EXPIRY_MS + 200_000).len(), 1);
    }

    #[test]
    fn finishing_hands_back_runs_and_samplers_once_and_refuses_later_work() {
        let mut s = Sessions::new();
        let id = s.create("alice", 0);
        s.add_run(&id, "r");
        s.add_sampler(&id, "smp");
        let ended = s.finish("alice", &id).unwrap();
        assert_eq!((ended.runs, ended.samplers), (vec!["r".to_string()], vec!["smp".to_string()]));
        assert_eq!(s.finish("alice", &id).unwrap().runs, Vec::<String>::new());
        assert_eq!(s.check_active("alice", &id), Err(SessionRefusal::Gone(SessionState::Finished)));
        assert!(s.expire(10 * SESSION_EXPIRY_MS).is_empty());
    }

    #[test]
    fn sessions_are_invisible_to_other_tenants() {
        let mut s = Sessions::new();
        let id = s.create("alice", 0);
        assert_eq!(s.heartbeat("bob", &id, 1), Err(SessionRefusal::Unknown));
        assert_eq!(s.finish("bob", &id), Err(SessionRefusal::Unknown));
        assert_eq!(s.check_active("bob", &id), Err(SessionRefusal::Unknown));
    }

    #[test]
    fn restored_sessions_are_expired_and_new_ids_do_not_collide() {
        let mut s = Sessions::new();
        s.restore("sess-7", "alice", 0);
        assert_eq!(s.state("sess-7"), Some(SessionState::Expired));
        assert_eq!(s.create("alice", 0), "sess-8");
    }
}
