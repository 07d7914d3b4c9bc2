//! The alert state machine: each instance of a rule (a rule plus its labels) goes pending when
//! its condition holds, firing once it has held for `for`, and resolved once it has been clear
//! for `keep_firing_for` (so a condition that flickers does not flap). Every transition is
//! published on the event bus with the alert in Alertmanager's shape as its data.

use super::rules::{Hit, Rule};
use crate::events::{Event, EventBus, EventKind};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Instant, SystemTime};

/// Where an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Firing,
}

/// One live instance.
#[derive(Debug, Clone)]
pub struct Instance {
    pub rule: &'static str,
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub description: String,
    pub runbook: String,
    pub runbook_url: Option<String>,
    pub state: State,
    /// When the condition started to hold (pending) and when it fired.
    pub active_since: SystemTime,
    pub fired_at: Option<SystemTime>,
    since: Instant,
    last_true: Instant,
}

/// A stable id for a label set (hex), as Alertmanager's `fingerprint`.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    format!("{:016x}", h.finish())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Instance {
    /// The alert in Alertmanager's webhook shape.
    pub fn to_json(&self, status: &str, ends: Option<SystemTime>, external_url: &str) -> Value {
        let mut annotations = json!({
            "summary": self.summary,
            "description": self.description,
            "runbook": self.runbook,
        });
        if let Some(u) = &self.runbook_url {
            annotations["runbook_url"] = json!(u);
        }
        json!({
            "status": status,
            "labels": self.labels,
            "annotations": annotations,
            "startsAt": rfc3339(self.fired_at.unwrap_or(self.active_since)),
            "endsAt": ends.map_or("0001-01-01T00:00:00Z".to_string(), rfc3339),
            "generatorURL": format!("{external_url}/#alert-{}", self.rule),
            "fingerprint": fingerprint(&self.labels),
            "state": match self.state { State::Pending => "pending", State::Firing => "firing" },
        })
    }
}

/// The live instances, keyed by fingerprint.
#[derive(Debug, Default)]
pub struct Alerts {
    live: HashMap<String, Instance>,
}

impl Alerts {
    /// Feeds one evaluation of `rule` (its hits now) and publishes the transitions.
    pub fn update(
        &mut self,
        rule: &Rule,
        hits: Vec<Hit>,
        now: Instant,
        bus: &EventBus,
        external_url: &str,
        admin: &str,
    ) {
        let mut seen = Vec::with_capacity(hits.len());
        for h in hits {
            let fp = fingerprint(&h.labels);
            seen.push(fp.clone());
            let runbook = rule.runbook.replace("ADMIN", admin);
            let inst = self.live.entry(fp).or_insert_with(|| Instance {
                rule: rule.name,
                labels: h.labels.clone(),
                summary: h.summary.clone(),
                description: h.description.clone(),
                runbook,
                runbook_url: rule.runbook_url.clone(),
                state: State::Pending,
                active_since: SystemTime::now(),
                fired_at: None,
                since: now,
                last_true: now,
            });
            inst.last_true = now;
            inst.summary = h.summary;
            inst.description = h.description;
            if inst.state == State::Pending {
                if now.duration_since(inst.since) >= rule.for_ {
                    inst.state = State::Firing;
                    inst.fired_at = Some(SystemTime::now());
                    publish(
                        bus,
                        EventKind::AlertFiring,
                        inst,
                        "firing",
                        None,
                        external_url,
                    );
                } else if inst.since == now {
                    publish(
                        bus,
                        EventKind::AlertPending,
                        inst,
                        "pending",
                        None,
                        external_url,
                    );
                }
            }
        }
        let keep = rule.keep_firing_for;
        let mut gone = Vec::new();
        for (fp, inst) in &self.live {
            if inst.rule != rule.name || seen.contains(fp) {
                continue;
            }
            match inst.state {
                State::Pending => gone.push((fp.clone(), false)),
                State::Firing if now.duration_since(inst.last_true) >= keep => {
                    gone.push((fp.clone(), true));
                }
                State::Firing => {}
            }
        }
        for (fp, resolved) in gone {
            if let Some(inst) = self.live.remove(&fp)
                && resolved
            {
                publish(
                    bus,
                    EventKind::AlertResolved,
                    &inst,
                    "resolved",
                    Some(SystemTime::now()),
                    external_url,
                );
            }
        }
    }

    /// Drops the instances of rules that are no longer enabled (resolving the firing ones).
    pub fn retain_rules(&mut self, enabled: &[&str], bus: &EventBus, external_url: &str) {
        let drop: Vec<String> = self
            .live
            .iter()
            .filter(|(_, i)| !enabled.contains(&i.rule))
            .map(|(k, _)| k.clone())
            .collect();
        for fp in drop {
            if let Some(inst) = self.live.remove(&fp)
                && inst.state == State::Firing
            {
                let now = Some(SystemTime::now());
                publish(
                    bus,
                    EventKind::AlertResolved,
                    &inst,
                    "resolved",
                    now,
                    external_url,
                );
            }
        }
    }

    /// Live instances, firing first, then by start.
    pub fn list(&self) -> Vec<Instance> {
        let mut v: Vec<Instance> = self.live.values().cloned().collect();
        v.sort_by(|a, b| {
            (a.state != State::Firing, a.active_since)
                .cmp(&(b.state != State::Firing, b.active_since))
        });
        v
    }

    /// Firing instances per (rule, severity).
    pub fn firing_counts(&self) -> BTreeMap<(&'static str, String), i64> {
        let mut m = BTreeMap::new();
        for i in self.live.values().filter(|i| i.state == State::Firing) {
            let sev = i.labels.get("severity").cloned().unwrap_or_default();
            *m.entry((i.rule, sev)).or_insert(0) += 1;
        }
        m
    }
}

fn publish(
    bus: &EventBus,
    kind: EventKind,
    inst: &Instance,
    status: &str,
    ends: Option<SystemTime>,
    external_url: &str,
) {
    let mut e = Event::new(
        kind,
        format!("alert {} {status}: {}", inst.rule, inst.summary),
    )
    .data(inst.to_json(
        if status == "resolved" {
            "resolved"
        } else {
            "firing"
        },
        ends,
        external_url,
    ));
    if let Some(p) = inst.labels.get("pool") {
        e = e.pool(p);
    }
    if let Some(s) = inst.labels.get("server") {
        e = e.server(s);
    }
    e.data["state"] = json!(status);
    bus.publish(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hit() -> Hit {
        Hit {
            labels: [
                ("alertname", "server_down"),
                ("server", "a:1"),
                ("pool", "web"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            summary: "down".into(),
            description: "down".into(),
        }
    }

    fn drain(rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Event>>) -> Vec<EventKind> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            v.push(e.kind);
        }
        v
    }

    #[test]
    fn pending_then_firing_and_a_flickering_condition_does_not_flap() {
        let bus = EventBus::default();
        let mut rx = bus.subscribe();
        let mut rule = super::super::rules::rules(&[], 1.0)
            .into_iter()
            .find(|r| r.name == "server_down")
            .unwrap();
        rule.for_ = Duration::from_secs(2);
        rule.keep_firing_for = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut a = Alerts::default();
        a.update(&rule, vec![hit()], at(0), &bus, "http://x", "admin");
        assert_eq!(drain(&mut rx), vec![EventKind::AlertPending]);
        a.update(&rule, vec![hit()], at(1), &bus, "http://x", "admin");
        assert!(drain(&mut rx).is_empty(), "still pending");
        a.update(&rule, vec![hit()], at(2), &bus, "http://x", "admin");
        assert_eq!(drain(&mut rx), vec![EventKind::AlertFiring]);
        // Clear, back, clear: within keep_firing_for nothing changes.
        a.update(&rule, vec![], at(3), &bus, "http://x", "admin");
        a.update(&rule, vec![hit()], at(4), &bus, "http://x", "admin");
        a.update(&rule, vec![], at(5), &bus, "http://x", "admin");
        a.update(&rule, vec![], at(13), &bus, "http://x", "admin");
        assert!(drain(&mut rx).is_empty(), "no flapping");
        assert_eq!(a.firing_counts().values().sum::<i64>(), 1);
        a.update(&rule, vec![], at(14), &bus, "http://x", "admin");
        assert_eq!(drain(&mut rx), vec![EventKind::AlertResolved]);
        assert!(a.list().is_empty());
        // A pending alert whose condition clears is dropped silently.
        a.update(&rule, vec![hit()], at(20), &bus, "http://x", "admin");
        a.update(&rule, vec![], at(21), &bus, "http://x", "admin");
        assert_eq!(drain(&mut rx), vec![EventKind::AlertPending]);
        assert!(a.list().is_empty());
    }

    #[test]
    fn runbook_names_the_admin_address_and_fingerprints_are_stable() {
        let bus = EventBus::default();
        let rule = super::super::rules::rules(&[], 1.0)
            .into_iter()
            .find(|r| r.name == "pool_unavailable")
            .unwrap();
        let mut a = Alerts::default();
        a.update(
            &rule,
            vec![hit()],
            Instant::now(),
            &bus,
            "http://x",
            "127.0.0.1:9090",
        );
        let i = &a.list()[0];
        assert!(i.runbook.contains("http://127.0.0.1:9090/api/status"));
        assert_eq!(fingerprint(&hit().labels), fingerprint(&hit().labels));
        let j = i.to_json("firing", None, "http://x");
        assert_eq!(j["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(j["fingerprint"], fingerprint(&i.labels));
    }
}
