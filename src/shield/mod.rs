//! The shield: levee's built-in intrusion detection and prevention.
//!
//! It runs in front of routing: at accept (deny list, bans, per-client connection cap — the
//! cheapest point to refuse), on every request (identity, rate limits, concurrency, scores),
//! on connections that misbehave (slow headers, bodies and reads), and once a second in the
//! background (ban expiry, attack detection). Violations add to a client's score; past the
//! threshold the client is banned, doubling on repeat. In `detect` mode (or a rule's own dry
//! run) everything is computed, logged and counted, and nothing is blocked.

pub mod bans;
pub mod cidr;
pub mod clients;
pub mod detect;
pub mod identity;

use crate::clock::now_ms;
use crate::config::shield::{Rule, Shield as Cfg};
use crate::events::{Event, EventBus, EventKind};
use crate::observe::metrics::{Metrics, Reason};
use arc_swap::ArcSwap;
use bans::{Ban, BanReason, Bans};
use cidr::CidrSet;
use clients::{ClientTable, Limit, RequestCheck};
use identity::ClientKey;
use ipnet::IpNet;
use serde_json::json;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Kinds of misbehaviour that add to a client's score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    RateLimited,
    Connections,
    Concurrency,
    Malformed,
    SlowClient,
    ClientError,
}

impl Violation {
    fn ban_reason(self) -> BanReason {
        match self {
            Violation::RateLimited => BanReason::RateLimit,
            Violation::Connections => BanReason::Connections,
            Violation::Concurrency => BanReason::Concurrency,
            Violation::Malformed => BanReason::Malformed,
            Violation::SlowClient => BanReason::SlowClient,
            Violation::ClientError => BanReason::Scan,
        }
    }
    fn weight(self, c: &Cfg) -> f64 {
        match self {
            Violation::RateLimited => c.weight_rate_limited,
            Violation::Connections | Violation::Concurrency => c.weight_connections,
            Violation::Malformed => c.weight_malformed,
            Violation::SlowClient => c.weight_slow_client,
            Violation::ClientError => c.weight_client_error,
        }
    }
}

/// A request the shield refused.
#[derive(Debug, Clone, Copy)]
pub struct Rejection {
    pub status: u16,
    pub reason: Reason,
    pub retry_after_secs: u64,
    /// Close the connection after answering (banned, denied).
    pub close: bool,
}

/// The shield, shared by every connection. Its state outlives reloads.
pub struct Shield {
    cfg: ArcSwap<Cfg>,
    allow: ArcSwap<CidrSet>,
    deny: ArcSwap<CidrSet>,
    trusted: ArcSwap<Vec<IpNet>>,
    pub clients: ClientTable,
    pub bans: Bans,
    pub detector: detect::Detector,
    events: EventBus,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Shield {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shield")
            .field("bans", &self.bans.active())
            .field("tracked", &self.clients.tracked())
            .finish()
    }
}

/// A counted client connection; dropping it releases the count.
#[derive(Debug)]
pub struct ConnTicket {
    shield: Arc<Shield>,
    key: ClientKey,
    counted: bool,
    idle: bool,
}

impl ConnTicket {
    /// The connection became idle or busy. Returns false when it should be closed (too many
    /// idle connections for this client).
    pub fn set_idle(&mut self, idle: bool) -> bool {
        if !self.counted || idle == self.idle {
            return true;
        }
        self.idle = idle;
        let n = self.shield.clients.idle(self.key, idle, now_ms());
        if idle {
            let cfg = self.shield.cfg.load();
            if n > cfg.max_idle_per_client && self.shield.enforce(Rule::IdleCap, Reason::IdleCap) {
                return false;
            }
        }
        true
    }
}

impl Drop for ConnTicket {
    fn drop(&mut self) {
        if self.counted {
            self.shield
                .clients
                .disconnect(self.key, self.idle, now_ms());
        }
    }
}

/// A request in progress for the concurrency limit; dropping it ends it.
#[derive(Debug)]
pub struct ReqTicket {
    shield: Arc<Shield>,
    key: ClientKey,
}

impl ReqTicket {
    pub fn key(&self) -> ClientKey {
        self.key
    }
    /// Feeds a server's answer back: a burst of 4xx (a path scan) adds to the score.
    pub fn response_status(&self, status: u16) {
        if (400..500).contains(&status) && status != 429 {
            self.shield.violation(
                self.key,
                Violation::ClientError,
                "4xx answers from the servers (path scan?)",
            );
        }
    }
}

impl Drop for ReqTicket {
    fn drop(&mut self) {
        self.shield.clients.request_done(self.key, now_ms());
    }
}

impl Shield {
    pub fn new(
        cfg: &Cfg,
        trusted: &[IpNet],
        events: EventBus,
        metrics: Arc<Metrics>,
    ) -> Arc<Shield> {
        Arc::new(Shield {
            cfg: ArcSwap::from_pointee(cfg.clone()),
            allow: ArcSwap::from_pointee(CidrSet::new(&cfg.allow)),
            deny: ArcSwap::from_pointee(CidrSet::new(&cfg.deny)),
            trusted: ArcSwap::from_pointee(trusted.to_vec()),
            clients: ClientTable::new(cfg.max_tracked_clients),
            bans: Bans::default(),
            detector: detect::Detector::default(),
            events,
            metrics,
        })
    }

    /// Takes a new config (reload).
    pub fn apply(&self, cfg: &Cfg, trusted: &[IpNet]) {
        self.allow.store(Arc::new(CidrSet::new(&cfg.allow)));
        self.deny.store(Arc::new(CidrSet::new(&cfg.deny)));
        self.trusted.store(Arc::new(trusted.to_vec()));
        self.clients.set_capacity(cfg.max_tracked_clients);
        self.cfg.store(Arc::new(cfg.clone()));
    }

    /// The current settings.
    pub fn config(&self) -> Arc<Cfg> {
        self.cfg.load_full()
    }

    /// Counts a block (and returns true) or, for a dry rule, counts what would have been
    /// blocked (and returns false).
    fn enforce(&self, rule: Rule, reason: Reason) -> bool {
        if self.cfg.load().dry(rule) {
            self.metrics.would_block(reason);
            false
        } else {
            true
        }
    }

    fn key(&self, ip: IpAddr) -> ClientKey {
        ClientKey::of(ip, self.cfg.load().ipv6_prefix)
    }

    /// At accept, before anything is read. `Err`: close the connection now.
    pub fn admit_connection(self: &Arc<Self>, peer: IpAddr) -> Result<ConnTicket, Reason> {
        let cfg = self.cfg.load();
        let key = ClientKey::of(peer, cfg.ipv6_prefix);
        let uncounted = ConnTicket {
            shield: self.clone(),
            key,
            counted: false,
            idle: false,
        };
        if !cfg.enabled {
            return Ok(uncounted);
        }
        // Connections refused here count as requests for attack detection: a flood that the
        // bans already hold off at accept is still an attack in progress.
        if self.deny.load().contains(peer) && self.enforce(Rule::Bans, Reason::Denied) {
            self.detector.record(key, "");
            return Err(Reason::Denied);
        }
        if self.allow.load().contains(peer) || identity::trusted(peer, &self.trusted.load()) {
            return Ok(uncounted);
        }
        let now = now_ms();
        if self.bans.is_banned(peer, now) && self.enforce(Rule::Bans, Reason::Banned) {
            self.detector.record(key, "");
            return Err(Reason::Banned);
        }
        let enforce = !cfg.dry(Rule::Connections);
        match self
            .clients
            .connect(key, cfg.max_connections_per_client, enforce, now)
        {
            Ok(_) => Ok(ConnTicket {
                shield: self.clone(),
                key,
                counted: true,
                idle: false,
            }),
            Err(n) => {
                self.violation(
                    key,
                    Violation::Connections,
                    &format!(
                        "{n} connections open at once (limit {})",
                        cfg.max_connections_per_client
                    ),
                );
                if enforce {
                    self.detector.record(key, "");
                    Err(Reason::TooManyConnections)
                } else {
                    self.metrics.would_block(Reason::TooManyConnections);
                    Ok(ConnTicket {
                        shield: self.clone(),
                        key,
                        counted: true,
                        idle: false,
                    })
                }
            }
        }
    }

    /// Is this peer banned (its open connections should close)?
    pub fn peer_banned(&self, peer: IpAddr) -> bool {
        let cfg = self.cfg.load();
        cfg.enabled
            && !cfg.dry(Rule::Bans)
            && !self.allow.load().contains(peer)
            && self.bans.is_banned(peer, now_ms())
    }

    /// On every request, after the head is read. `Ok(None)`: the shield is off or the client
    /// is allowlisted.
    /// `ip` is the client as identified by [`identity::client_ip`].
    pub fn admit_request(
        self: &Arc<Self>,
        ip: IpAddr,
        path: &str,
    ) -> Result<Option<ReqTicket>, Rejection> {
        let cfg = self.cfg.load();
        if !cfg.enabled {
            return Ok(None);
        }
        let key = ClientKey::of(ip, cfg.ipv6_prefix);
        if self.allow.load().contains(ip) {
            self.detector.record(key, path);
            return Ok(None);
        }
        if self.deny.load().contains(ip) && self.enforce(Rule::Bans, Reason::Denied) {
            return Err(Rejection {
                status: 403,
                reason: Reason::Denied,
                retry_after_secs: 0,
                close: true,
            });
        }
        let now = now_ms();
        if let Some(b) = self.bans.find(ip, now)
            && self.enforce(Rule::Bans, Reason::Banned)
        {
            let secs = b.until_ms.saturating_sub(now).div_ceil(1000);
            self.detector.record(key, path);
            return Err(Rejection {
                status: 403,
                reason: Reason::Banned,
                retry_after_secs: secs,
                close: true,
            });
        }
        self.detector.record(key, path);
        let factor = if self.detector.active() {
            cfg.under_attack_rate_factor
        } else {
            1.0
        };
        let global = Limit {
            rate: cfg.rate * factor,
            burst: ((f64::from(cfg.burst) * factor).ceil() as u32).max(1),
        };
        let route = cfg
            .routes
            .iter()
            .take(clients::MAX_ROUTE_LIMITS)
            .enumerate()
            .find(|(_, r)| path.starts_with(r.path_prefix.as_str()))
            .map(|(i, r)| {
                (
                    i,
                    Limit {
                        rate: r.rate * factor,
                        burst: r.burst,
                    },
                )
            });
        let enforce_rate = !cfg.dry(Rule::RateLimit);
        let enforce_conc = !cfg.dry(Rule::Concurrency);
        match self.clients.request(
            key,
            now,
            global,
            route,
            cfg.max_requests_per_client,
            enforce_rate,
            enforce_conc,
        ) {
            RequestCheck::Ok => Ok(Some(ReqTicket {
                shield: self.clone(),
                key,
            })),
            RequestCheck::RateLimited { retry_after_ms } => {
                self.violation(key, Violation::RateLimited, "over the request rate limit");
                if enforce_rate {
                    Err(Rejection {
                        status: 429,
                        reason: Reason::RateLimited,
                        retry_after_secs: retry_after_ms.div_ceil(1000).max(1),
                        close: false,
                    })
                } else {
                    self.metrics.would_block(Reason::RateLimited);
                    Ok(Some(ReqTicket {
                        shield: self.clone(),
                        key,
                    }))
                }
            }
            RequestCheck::Concurrency => {
                self.violation(
                    key,
                    Violation::Concurrency,
                    "too many requests in progress at once",
                );
                if enforce_conc {
                    Err(Rejection {
                        status: 429,
                        reason: Reason::TooManyRequests,
                        retry_after_secs: 1,
                        close: false,
                    })
                } else {
                    self.metrics.would_block(Reason::TooManyRequests);
                    Ok(Some(ReqTicket {
                        shield: self.clone(),
                        key,
                    }))
                }
            }
        }
    }

    /// A connection-level violation seen by the listener (malformed request, slow client).
    pub fn connection_violation(&self, peer: IpAddr, v: Violation, what: &str) {
        let cfg = self.cfg.load();
        if !cfg.enabled
            || self.allow.load().contains(peer)
            || identity::trusted(peer, &self.trusted.load())
        {
            return;
        }
        self.violation(self.key(peer), v, what);
    }

    /// Adds to the client's score; bans it past the threshold.
    pub fn violation(&self, key: ClientKey, v: Violation, what: &str) {
        let cfg = self.cfg.load();
        if !cfg.bans_enabled {
            return;
        }
        let now = now_ms();
        let score = self.clients.add_score(
            key,
            v.weight(&cfg),
            cfg.score_half_life.as_millis() as u64,
            now,
        );
        if score < cfg.ban_threshold || self.bans.is_banned(key.ip(), now) {
            return;
        }
        self.clients.clear_score(key, now);
        let target = bans::client_net(key, cfg.ipv6_prefix);
        if cfg.dry(Rule::Bans) {
            self.metrics.would_block(Reason::Banned);
            tracing::warn!(client = %target, score, reason = v.ban_reason().as_str(), "would ban (dry run): {what}");
            return;
        }
        let note = format!("score {score:.1} passed {:.0}: {what}", cfg.ban_threshold);
        self.add_ban(target, v.ban_reason(), None, note, score);
    }

    fn add_ban(
        &self,
        target: IpNet,
        reason: BanReason,
        duration: Option<Duration>,
        note: String,
        score: f64,
    ) -> Ban {
        let cfg = self.cfg.load();
        let (ban, merged) = self.bans.ban(
            target,
            reason,
            duration,
            cfg.ban_duration,
            cfg.ban_max,
            note,
            now_ms(),
            cfg.max_bans,
        );
        self.metrics.ban(reason.as_str());
        let secs = ban.until_ms.saturating_sub(now_ms()).div_ceil(1000);
        self.events.publish(
            Event::new(EventKind::BanAdded, format!("{} banned for {} ({}): {}", ban.target, crate::config::units::fmt_duration(Duration::from_secs(secs)), reason.as_str(), ban.note))
                .client(ban.target.to_string())
                .data(json!({ "reason": reason.as_str(), "duration_secs": secs, "score": score, "manual": ban.manual, "count": ban.count, "note": ban.note })),
        );
        for m in merged {
            self.metrics.ban(BanReason::Merged.as_str());
            self.events.publish(
                Event::new(EventKind::BanAdded, format!("{} banned as a range: {}", m.target, m.note))
                    .client(m.target.to_string())
                    .data(json!({ "reason": "merged", "duration_secs": m.until_ms.saturating_sub(now_ms()) / 1000, "score": 0.0, "manual": false })),
            );
        }
        ban
    }

    /// A manual ban (admin API / `levee ban add`).
    pub fn manual_ban(&self, target: IpNet, duration: Duration, reason_text: &str) -> Ban {
        self.add_ban(
            target,
            BanReason::Manual,
            Some(duration),
            reason_text.to_string(),
            0.0,
        )
    }

    /// Lifts a ban (admin API / `levee ban remove`).
    pub fn unban(&self, target: &IpNet) -> Option<Ban> {
        let b = self.bans.unban(target)?;
        self.events.publish(
            Event::new(
                EventKind::BanRemoved,
                format!("ban on {} lifted by an operator", b.target),
            )
            .client(b.target.to_string())
            .data(json!({ "reason": b.reason.as_str() })),
        );
        Some(b)
    }

    /// Once a second: ban expiry, attack detection, gauges.
    pub fn tick(&self, seconds: u64) {
        let now = now_ms();
        for b in self.bans.sweep(now) {
            self.events.publish(
                Event::new(
                    EventKind::BanExpired,
                    format!("ban on {} expired", b.target),
                )
                .client(b.target.to_string())
                .data(json!({ "reason": b.reason.as_str(), "count": b.count })),
            );
        }
        let cfg = self.cfg.load();
        if seconds.is_multiple_of(60) {
            self.clients.sweep(600_000, now);
        }
        if cfg.enabled && cfg.attack_enabled {
            let s = detect::DetectSettings {
                factor: cfg.attack_factor,
                floor_rps: cfg.attack_floor_rps,
                for_secs: cfg.attack_for.as_secs().max(1),
                cooldown_secs: cfg.attack_cooldown.as_secs().max(1),
                baseline_secs: cfg.baseline_window.as_secs().max(1),
            };
            match self.detector.tick(s) {
                Some(detect::Transition::Started(r)) => self.events.publish(
                    Event::new(EventKind::AttackStarted, format!("attack suspected: {:.0} requests/s against a baseline of {:.0}, from about {} sources; top source {}", r.peak_rps, r.baseline_rps, r.sources, r.top_sources.first().map_or("-".to_string(), |t| format!("{} ({} requests)", t.0, t.1))))
                        .data(report_json(&r, None)),
                ),
                Some(detect::Transition::Ended(r, lasted)) => self.events.publish(
                    Event::new(EventKind::AttackEnded, format!("attack over after {}: peak {:.0} requests/s, about {} sources", crate::config::units::fmt_duration(Duration::from_secs(lasted.as_secs())), r.peak_rps, r.sources))
                        .data(report_json(&r, Some(lasted))),
                ),
                None => {}
            }
        }
        self.metrics.shield_gauges(
            self.bans.active() as i64,
            self.clients.tracked() as i64,
            self.detector.active(),
        );
    }

    /// Runs [`Shield::tick`] every second until the task is aborted.
    pub fn spawn_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            loop {
                t.tick().await;
                n += 1;
                me.tick(n);
            }
        })
    }
}

fn report_json(r: &detect::AttackReport, lasted: Option<Duration>) -> serde_json::Value {
    let pairs = |v: &[(String, u64)], k: &str| {
        v.iter()
            .map(|(a, c)| json!({ k: a, "count": c }))
            .collect::<Vec<_>>()
    };
    json!({
        "start": humantime::format_rfc3339_seconds(r.start).to_string(),
        "peak_rps": r.peak_rps,
        "baseline_rps": (r.baseline_rps * 10.0).round() / 10.0,
        "sources": r.sources,
        "top_sources": pairs(&r.top_sources, "client"),
        "top_subnets": pairs(&r.top_subnets, "subnet"),
        "top_paths": pairs(&r.top_paths, "path"),
        "duration_secs": lasted.map(|d| d.as_secs()),
    })
}
