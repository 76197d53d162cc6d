//! How many new Machines the cluster controller may make now. The
//! scheduler places Machines at a rate; Machines made faster than that
//! only wait in its queue (their create-to-bound time is that wait), and
//! each is work for every watcher meanwhile. So at most [`LIMIT`] Machines
//! wait for a host at once: a cluster that wants more is held, and woken
//! in turn as binds make room. Machines the scheduler found no room for
//! (`Scheduled=False`, Unschedulable) do not count, so that a fleet full
//! for one tenant's Machines does not hold back another's.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use kube::runtime::reflector::ObjectRef;
use paddock_api::{Cluster, Machine};

/// Machines waiting for a host, at most, before new ones wait to be made.
pub const LIMIT: usize = 512;

/// Whether `m` is in the scheduler's queue: not bound, not deleting, not
/// found unschedulable.
pub fn waits(m: &Machine) -> bool {
    m.spec.host_name.is_none()
        && m.metadata.deletion_timestamp.is_none()
        && !m.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Scheduled" && c.status == "False")
        })
}

#[derive(Debug, Default)]
struct State {
    /// Machines the watch shows waiting for a host.
    waiting: usize,
    /// Machines granted and being made, not shown by the watch yet.
    making: usize,
    /// Clusters that wanted more than they were granted, oldest first.
    held: VecDeque<ObjectRef<Cluster>>,
    held_set: HashSet<ObjectRef<Cluster>>,
    /// Clusters woken that have yet to come back for their room.
    woken: usize,
}

impl State {
    fn room(&self, limit: usize) -> usize {
        limit.saturating_sub(self.waiting + self.making)
    }

    /// Held clusters to wake for the room there is: one per ten Machines
    /// of room (a cluster's worth) beyond what the clusters woken before
    /// will take, and one when there is room and none is on its way.
    fn wake(&mut self, limit: usize) -> Vec<ObjectRef<Cluster>> {
        let room = self.room(limit);
        if room == 0 {
            return Vec::new();
        }
        let mut n = room.saturating_sub(self.woken * 10) / 10;
        if n == 0 && self.woken == 0 {
            n = 1;
        }
        let n = n.min(self.held.len());
        let woken: Vec<_> = self.held.drain(..n).collect();
        for c in &woken {
            self.held_set.remove(c);
        }
        self.woken += woken.len();
        woken
    }
}

/// The count of waiting Machines and the clusters held for room.
#[derive(Debug)]
pub struct Intake {
    limit: usize,
    state: Mutex<State>,
}

impl Default for Intake {
    fn default() -> Self {
        Self::new(LIMIT)
    }
}

impl Intake {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Counters only: a panic elsewhere leaves them usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A Machine changed from `was` waiting to `now` waiting (a create is
    /// `false → now`, a delete `was → false`). Returns the held clusters
    /// to wake.
    pub fn seen(&self, was: bool, now: bool, created: bool) -> Vec<ObjectRef<Cluster>> {
        let mut s = self.lock();
        match (was, now) {
            (false, true) => s.waiting += 1,
            (true, false) => s.waiting = s.waiting.saturating_sub(1),
            _ => {}
        }
        if created {
            // One of the Machines being made is in the watch now.
            s.making = s.making.saturating_sub(1);
        }
        s.wake(self.limit)
    }

    /// After a relist: `waiting` Machines wait. Returns the clusters to wake.
    pub fn recount(&self, waiting: usize) -> Vec<ObjectRef<Cluster>> {
        let mut s = self.lock();
        s.waiting = waiting;
        s.making = 0;
        s.woken = 0;
        s.wake(self.limit)
    }

    /// Of the `want` Machines `cluster` would make, how many it may make
    /// now; a cluster granted fewer is held, to be woken when there is room.
    pub fn take(&self, cluster: &ObjectRef<Cluster>, want: usize) -> usize {
        let mut s = self.lock();
        s.woken = s.woken.saturating_sub(1);
        let granted = want.min(s.room(self.limit));
        s.making += granted;
        if granted < want && s.held_set.insert(cluster.clone()) {
            s.held.push_back(cluster.clone());
        }
        granted
    }

    /// `n` of the Machines granted were not made after all (their create failed).
    pub fn not_made(&self, n: usize) {
        let mut s = self.lock();
        s.making = s.making.saturating_sub(n);
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.waiting, s.making, s.held.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(name: &str) -> ObjectRef<Cluster> {
        ObjectRef::new(name).within("acme")
    }

    #[test]
    fn clusters_beyond_the_limit_are_held_and_woken_in_turn_as_binds_make_room() {
        let i = Intake::new(20);
        assert_eq!(i.take(&c("a"), 10), 10);
        assert_eq!(i.take(&c("b"), 10), 10);
        // No room left: c and d are held, and c asking again is held once.
        assert_eq!(i.take(&c("c"), 10), 0);
        assert_eq!(i.take(&c("d"), 10), 0);
        assert_eq!(i.take(&c("c"), 10), 0);
        assert_eq!(i.counts(), (0, 20, 2));
        // a's and b's Machines show in the watch, waiting: still no room.
        for _ in 0..20 {
            assert!(i.seen(false, true, true).is_empty());
        }
        assert_eq!(i.counts(), (20, 0, 2));
        // Nine binds: room for nine, one cluster woken (the oldest held).
        let mut woken = Vec::new();
        for _ in 0..9 {
            woken.extend(i.seen(true, false, false));
        }
        assert_eq!(woken, vec![c("c")]);
        // c takes what room there is and is held again for the rest.
        assert_eq!(i.take(&c("c"), 10), 9);
        assert_eq!(i.counts(), (11, 9, 2));
        // A create that failed gives its room back.
        i.not_made(9);
        assert_eq!(i.counts(), (11, 0, 2));
    }

    #[test]
    fn a_relist_recounts_and_wakes_for_the_room_it_finds() {
        let i = Intake::new(20);
        assert_eq!(i.take(&c("a"), 30), 20);
        assert_eq!(i.counts(), (0, 20, 1));
        assert_eq!(i.recount(0), vec![c("a")]);
        assert_eq!(i.counts(), (0, 0, 0));
    }

    #[test]
    fn unschedulable_bound_and_deleting_machines_do_not_wait() {
        let mut m: Machine = serde_json::from_value(serde_json::json!({
            "apiVersion": "paddock.io/v1alpha1", "kind": "Machine",
            "metadata": {"name": "m", "namespace": "acme"},
            "spec": {"clusterName": "demo", "role": "worker", "cpu": 1, "memory": "1Gi", "disk": "1Gi"}
        }))
        .expect("machine");
        assert!(waits(&m));
        let mut bound = m.clone();
        bound.spec.host_name = Some("h1".into());
        assert!(!waits(&bound));
        m.status = serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "Scheduled", "status": "False", "reason": "Unschedulable",
                            "message": "no host has room", "lastTransitionTime": "2026-12-04T00:00:00Z"}]
        }))
        .expect("status");
        assert!(!waits(&m));
    }
}
