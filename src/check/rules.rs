//! The rule registry and the rules about single keys.
//!
//! A rule is one entry of [`RULES`]: a stable id, a name, the worst severity it reports, why it
//! matters (one sentence) and a function that pushes its findings. Adding a rule is writing the
//! function and adding one entry; `levee check --list-rules` and the README list them.

use super::capacity;
use super::{Ctx, Finding, Severity};
use crate::config::units::fmt_duration;
use serde_json::json;
use std::time::Duration;

/// One rule of the review.
pub struct Rule {
    /// Stable id (`L012`): never reused for another rule.
    pub id: &'static str,
    pub name: &'static str,
    /// The worst severity it reports.
    pub severity: Severity,
    /// Why it matters, in one sentence (printed with every finding).
    pub why: &'static str,
    pub check: fn(&Ctx, &Rule, &mut Vec<Finding>),
}

macro_rules! rule {
    ($id:literal, $name:literal, $sev:ident, $why:literal, $check:path) => {
        Rule {
            id: $id,
            name: $name,
            severity: Severity::$sev,
            why: $why,
            check: $check,
        }
    };
}

/// Every rule, in id order.
pub const RULES: &[Rule] = &[
    rule!(
        "L001",
        "max-concurrency-implicit",
        Warning,
        "the cap on requests in flight to each server is what keeps a server alive under a flood, and the default of 64 was chosen by nobody who knows your servers.",
        max_concurrency_implicit
    ),
    rule!(
        "L002",
        "max-concurrency-unbounded",
        Error,
        "a cap this high never binds, so a flood reaches the servers in full, which is how the outage happened.",
        max_concurrency_unbounded
    ),
    rule!(
        "L003",
        "queue-unbounded",
        Error,
        "a long queue hides overload: clients wait for answers that come too late, and a heavy client's true rate is hidden from the limiter.",
        queue_unbounded
    ),
    rule!(
        "L004",
        "queue-timeout-above-request-timeout",
        Warning,
        "a request that waits that long in the queue has no time left to be served, so the wait only holds a connection open for a 504.",
        queue_timeout
    ),
    rule!(
        "L005",
        "retry-budget-unbounded",
        Error,
        "without a budget every failed request is sent again, so a struggling pool gets more load exactly when it can take less (a retry storm).",
        retry_budget
    ),
    rule!(
        "L007",
        "health-check-off",
        Warning,
        "without active checks a dead server keeps getting its share of requests until users' requests fail on it.",
        health_off
    ),
    rule!(
        "L008",
        "health-check-slow",
        Warning,
        "while a dead server is still marked up, its share of requests fails.",
        health_slow
    ),
    rule!(
        "L009",
        "health-check-aggressive",
        Warning,
        "health checks are load too, and checks this frequent spend capacity the users need.",
        health_aggressive
    ),
    rule!(
        "L010",
        "request-timeout-too-long",
        Warning,
        "clients and browsers give up long before that, so levee would keep working, and holding a server slot, for answers nobody reads.",
        request_timeout
    ),
    rule!(
        "L011",
        "header-timeout-above-request-timeout",
        Warning,
        "the shorter request_timeout always fires first, so the longer timeout is never what happens and misleads whoever reads the config.",
        header_timeout
    ),
    rule!(
        "L012",
        "single-server",
        Warning,
        "with one server there is no redundancy: when it fails or restarts, every request of the pool gets 503.",
        single_server
    ),
    rule!(
        "L013",
        "weight-above-capacity-share",
        Error,
        "a server that gets a larger share of the requests than of the capacity is overloaded first, while the others still have room.",
        capacity::weights
    ),
    rule!(
        "L014",
        "trusted-proxies-too-wide",
        Error,
        "anyone inside a trusted range can forge X-Forwarded-For, so client limits, bans and logs can be dodged or pinned on someone else.",
        trusted_proxies
    ),
    rule!(
        "L015",
        "admin-not-loopback",
        Warning,
        "the admin API can reload the config and shows the whole topology, so it should not be reachable from the network even with a token.",
        admin_public
    ),
    rule!(
        "L016",
        "shield-off-on-public-listener",
        Error,
        "a listener reachable from the network without the shield forwards every flood and slowloris to the caps, and nothing ever bans the sources, as in the outage.",
        shield_off_public
    ),
    rule!(
        "L017",
        "client-rate-above-capacity",
        Warning,
        "a per-client rate limit above what the whole pool can serve lets one client alone saturate the pool before the shield sees anything wrong.",
        client_rate_above_capacity
    ),
    rule!(
        "L018",
        "alerts-off",
        Warning,
        "in the outage the on-call engineer got a vague alert late; without levee's alerts, or with nobody paged, an overload goes unnoticed until users complain.",
        alerts_off
    ),
    rule!(
        "L019",
        "journal-off",
        Warning,
        "without the journal an incident leaves no timeline, and the postmortem has to be written from memory.",
        journal_off
    ),
    rule!(
        "L101",
        "capacity-model-incomplete",
        Warning,
        "without each server's capacity and the expected peak, nobody can tell whether this pool survives its peak.",
        capacity::incomplete
    ),
    rule!(
        "L102",
        "peak-above-capacity",
        Error,
        "at its expected peak this pool gets more requests than its servers can serve, so levee must shed the excess with 503s.",
        capacity::peak_above_capacity
    ),
    rule!(
        "L103",
        "low-headroom",
        Warning,
        "a pool near its capacity at peak has no room for a slow dependency, a deploy or an unusual day.",
        capacity::low_headroom
    ),
    rule!(
        "L104",
        "no-n-plus-1",
        Warning,
        "servers fail and are restarted for deploys, and a pool that needs every server at peak sheds load whenever one is missing.",
        capacity::n_plus_1
    ),
    rule!(
        "L105",
        "retry-storm",
        Error,
        "retries add load when servers fail, so a pool that is only just big enough tips over into a retry storm.",
        capacity::retry_storm
    ),
    rule!(
        "L106",
        "max-concurrency-vs-littles-law",
        Error,
        "by Little's law a server at full capacity works on capacity_rps × latency requests at once: a cap far above that only lets requests queue inside the server, a cap below it leaves capacity unused.",
        capacity::little
    ),
];

/// Rules that wait for config sections that do not exist yet: (name, what it will check).
pub const PLANNED: &[(&str, &str)] = &[];

/// Not a rule: levee never retries a non-idempotent request after it was sent, and there is no
/// key to make it, so the review has nothing to check.
pub const NOT_APPLICABLE: &[(&str, &str)] = &[(
    "L006",
    "retries on non-idempotent methods: levee never retries a POST or PATCH that reached a server, and no key can change that",
)];

fn pool_key(p: &crate::config::Pool, k: &str) -> String {
    format!("pools.{}.{k}", p.name)
}

fn max_concurrency_implicit(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        let key = pool_key(p, "max_concurrency");
        let every_server = (0..p.servers.len())
            .all(|i| cx.written(&format!("pools.{}.servers[{i}].max_concurrency", p.name)));
        if cx.written(&key) || every_server {
            continue;
        }
        let hint = match (
            p.servers.iter().find_map(|s| s.capacity_rps),
            p.typical_latency,
        ) {
            (Some(c), Some(l)) => format!(
                " (capacity_rps × typical_latency gives about {:.0})",
                (c * l.as_secs_f64() * 1.25).ceil()
            ),
            _ => String::new(),
        };
        out.push(cx.finding(rule, Severity::Warning, key,
            format!("pool {:?} does not set max_concurrency, so each server gets the default cap of {}", p.name, p.servers.first().map_or(64, |s| s.max_concurrency)),
            format!("set max_concurrency to what one server can work on at once{hint}: measure it with `levee probe`, or use max_concurrency = \"auto\"")));
    }
}

fn max_concurrency_unbounded(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        if p.adaptive.is_some() {
            continue;
        }
        for (i, s) in p.servers.iter().enumerate() {
            if s.max_concurrency < 10_000 {
                continue;
            }
            let own = format!("pools.{}.servers[{i}].max_concurrency", p.name);
            let key = if cx.written(&own) {
                own
            } else {
                pool_key(p, "max_concurrency")
            };
            if out.iter().any(|f| f.id == rule.id && f.key == key) {
                continue;
            }
            let mut f = cx.finding(rule, Severity::Error, key,
                format!("server {}{} may have {} requests in flight at once: no web server works on that many", s.name, if p.servers.len() > 1 && !cx.written(&format!("pools.{}.servers[{i}].max_concurrency", p.name)) { " (and every server of the pool)" } else { "" }, s.max_concurrency),
                "set what one server can really take (usually tens to a few hundred); `levee probe` measures it");
            f.data = json!({ "server": s.name, "max_concurrency": s.max_concurrency });
            out.push(f);
        }
    }
}

fn queue_unbounded(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for (p, m) in cx.cfg.pools.iter().zip(cx.capacity) {
        let key = pool_key(p, "queue_size");
        let slots: u64 = p.servers.iter().map(|s| u64::from(s.max_concurrency)).sum();
        if p.queue_size > 10_000 {
            out.push(cx.finding(
                rule,
                Severity::Error,
                key,
                format!(
                    "queue_size {} is unbounded in practice ({} server slots behind it)",
                    p.queue_size, slots
                ),
                format!(
                    "keep the queue to a few times the pool's slots, e.g. queue_size = {}",
                    (slots * 2).clamp(16, 1024)
                ),
            ));
        } else if let Some(c) = m.capacity_rps {
            let drain = p.queue_size as f64 / c;
            if drain > p.queue_timeout.as_secs_f64() * 2.0 && p.queue_size > 16 {
                let mut f = cx.finding(rule, Severity::Warning, key,
                    format!("a full queue of {} takes {:.1}s to drain at {:.0} rps, but queue_timeout is {}: the back of the queue always times out", p.queue_size, drain, c, fmt_duration(p.queue_timeout)),
                    format!("set queue_size near capacity × queue_timeout, about {:.0}", (c * p.queue_timeout.as_secs_f64()).ceil()));
                f.data = json!({ "queue_size": p.queue_size, "drain_seconds": drain, "capacity_rps": c });
                out.push(f);
            }
        }
    }
}

fn queue_timeout(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        if p.queue_size > 0 && p.queue_timeout >= p.request_timeout {
            out.push(cx.finding(rule, Severity::Warning, pool_key(p, "queue_timeout"),
                format!("queue_timeout {} is not shorter than request_timeout {}", fmt_duration(p.queue_timeout), fmt_duration(p.request_timeout)),
                "keep queue_timeout a small part of request_timeout (the default is 1s of 60s): an overloaded pool should answer 503 quickly"));
        }
    }
}

fn retry_budget(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for (p, m) in cx.cfg.pools.iter().zip(cx.capacity) {
        let r = &p.retry;
        if r.attempts <= 1 {
            continue;
        }
        if r.budget_ratio >= 1.0 {
            out.push(cx.finding(rule, Severity::Error, pool_key(p, "retry.budget_ratio"),
                format!("budget_ratio {} lets every request be retried: with attempts = {} the pool can get {}× its load", r.budget_ratio, r.attempts, r.attempts),
                "set budget_ratio to 0.1–0.2 (retries at most 10–20% of requests)"));
            continue;
        }
        let limit = m.capacity_rps.map_or(100.0, |c| (c * 0.1).max(10.0));
        if f64::from(r.budget_min_per_second) > limit {
            let mut f = cx.finding(rule, Severity::Warning, pool_key(p, "retry.budget_min_per_second"),
                format!("budget_min_per_second {} allows that many retries every second whatever the ratio{}", r.budget_min_per_second, m.capacity_rps.map(|c| format!(" ({:.0}% of the pool's capacity)", f64::from(r.budget_min_per_second) / c * 100.0)).unwrap_or_default()),
                format!("keep it small (default 3){}", m.capacity_rps.map(|_| format!(", at most {limit:.0} here")).unwrap_or_default()));
            f.data = json!({ "budget_min_per_second": r.budget_min_per_second, "limit": limit });
            out.push(f);
        }
    }
}

fn health_off(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        if p.health_check.is_some() {
            continue;
        }
        let passive = p.outlier.consecutive_failures > 0;
        out.push(cx.finding(
            rule,
            Severity::Warning,
            pool_key(p, "health_check.enabled"),
            format!(
                "pool {:?} has active health checks off{}",
                p.name,
                if passive {
                    " (only passive ejection after failed requests notices a dead server)"
                } else {
                    " and passive ejection off too: nothing notices a dead server"
                }
            ),
            "set [pools.NAME.health_check] enabled = true with a cheap path such as \"/health\"",
        ));
    }
}

fn health_slow(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        let Some(h) = &p.health_check else { continue };
        let detect = h.interval * h.fall;
        if detect > Duration::from_secs(30) {
            let mut f = cx.finding(
                rule,
                Severity::Warning,
                pool_key(p, "health_check.interval"),
                format!(
                    "a dead server is noticed only after interval × fall = {} × {} = {}",
                    fmt_duration(h.interval),
                    h.fall,
                    fmt_duration(detect)
                ),
                "keep interval × fall within 10–30s (the default is 2s × 3 = 6s)",
            );
            f.data = json!({ "detect_seconds": detect.as_secs_f64() });
            out.push(f);
        }
    }
}

fn health_aggressive(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        let Some(h) = &p.health_check else { continue };
        let per_server = 1.0 / h.interval.as_secs_f64().max(1e-3);
        let min_cap = p
            .servers
            .iter()
            .filter_map(|s| s.capacity_rps)
            .fold(f64::INFINITY, f64::min);
        let key = pool_key(p, "health_check.interval");
        if min_cap.is_finite() && per_server > min_cap * 0.01 {
            let mut f = cx.finding(rule, Severity::Warning, key,
                format!("a check every {} is {per_server:.1} rps per server, {:.1}% of the smallest server's {min_cap:.0} rps", fmt_duration(h.interval), per_server / min_cap * 100.0),
                format!("check at most every {} (1% of capacity)", fmt_duration(Duration::from_secs_f64((100.0 / min_cap).min(3600.0)))));
            f.data = json!({ "check_rps_per_server": per_server, "capacity_rps": min_cap });
            out.push(f);
        } else if !min_cap.is_finite() && h.interval < Duration::from_millis(100) {
            out.push(cx.finding(
                rule,
                Severity::Warning,
                key,
                format!(
                    "a check every {} is {per_server:.0} requests per second to every server",
                    fmt_duration(h.interval)
                ),
                "check every 1–5s; fall and rise decide how fast a state change is believed",
            ));
        }
    }
}

fn request_timeout(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        if p.request_timeout > Duration::from_secs(60) {
            out.push(cx.finding(rule, Severity::Warning, pool_key(p, "request_timeout"),
                format!("request_timeout {} is longer than clients wait", fmt_duration(p.request_timeout)),
                "keep request_timeout at or below 60s (most browsers and SDKs give up around 30–60s); move long jobs to an asynchronous API"));
        }
    }
}

fn header_timeout(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        if p.response_header_timeout > p.request_timeout {
            out.push(cx.finding(rule, Severity::Warning, pool_key(p, "response_header_timeout"),
                format!("response_header_timeout {} is longer than request_timeout {}", fmt_duration(p.response_header_timeout), fmt_duration(p.request_timeout)),
                "set response_header_timeout below request_timeout (the default is 30s of 60s), so one slow attempt leaves time for a retry"));
        }
        if p.connect_timeout >= p.request_timeout {
            out.push(cx.finding(rule, Severity::Warning, pool_key(p, "connect_timeout"),
                format!("connect_timeout {} is not shorter than request_timeout {}", fmt_duration(p.connect_timeout), fmt_duration(p.request_timeout)),
                "a connect takes milliseconds when the server is there: keep connect_timeout at 1–3s"));
        }
    }
}

fn single_server(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for p in &cx.cfg.pools {
        if p.servers.len() == 1 {
            out.push(cx.finding(rule, Severity::Warning, pool_key(p, "servers"),
                format!("pool {:?} has a single server ({})", p.name, p.servers[0].name),
                "add a second server (in another failure domain) so the pool survives one failure or restart"));
        }
    }
}

fn trusted_proxies(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    for (i, net) in cx.cfg.listener.trusted_proxies.iter().enumerate() {
        if net.prefix_len() < 8 {
            let everyone = net.prefix_len() == 0;
            out.push(cx.finding(rule, Severity::Error, format!("listener.trusted_proxies[{i}]"),
                format!("{net} trusts {}", if everyone { "every address on the internet" } else { "a range wider than /8" }),
                "list only your own proxies or load balancers, e.g. \"10.0.12.0/24\", or leave trusted_proxies empty"));
        }
    }
}

fn admin_public(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    let bind = cx.cfg.admin.bind;
    if !bind.ip().is_loopback() {
        out.push(cx.finding(rule, Severity::Warning, "admin.bind",
            format!("the admin API listens on {bind}, which is not loopback (a token protects it)"),
            "bind it to 127.0.0.1 and reach it through SSH or a private network; keep token_file either way"));
    }
}

fn shield_off_public(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    let bind = cx.cfg.listener.bind;
    if bind.ip().is_loopback() {
        return;
    }
    let sh = &cx.cfg.shield;
    if !sh.enabled {
        out.push(cx.finding(rule, Severity::Error, "shield.enabled",
            format!("the shield is off on {bind}, a listener that is not loopback"),
            "remove `enabled = false` from [shield] (or bind the listener to loopback behind another proxy)"));
    } else if sh.detect_only {
        out.push(cx.finding(rule, Severity::Warning, "shield.mode",
            format!("the shield only detects on {bind}: nothing is limited or banned"),
            "once the would-block counts (levee_shield_would_block_total) look right, set mode = \"enforce\""));
    }
}

fn client_rate_above_capacity(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    let sh = &cx.cfg.shield;
    if !sh.enabled {
        return;
    }
    let smallest = cx
        .capacity
        .iter()
        .filter_map(|p| p.capacity_rps.map(|c| (p, c)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((p, cap)) = smallest
        && sh.rate > cap
    {
        out.push(cx.finding(rule, Severity::Warning, "shield.rate",
            format!("one client may send {:.0} requests/s, more than pool {} can serve ({cap:.0}/s)", sh.rate, p.pool),
            format!("set shield.rate well under {cap:.0} (a browser needs a few per second; bursts are what `burst` is for)")));
    }
}

/// Alerts and the journal matter where real users are: both rules apply to a listener that is
/// not loopback (a loopback-only levee is a development or test setup).
fn alerts_off(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    if cx.cfg.listener.bind.ip().is_loopback() {
        return;
    }
    let o = &cx.cfg.observe;
    if !o.alerting.enabled {
        out.push(cx.finding(
            rule,
            Severity::Warning,
            "alerting.enabled",
            "levee's alerts are off",
            "remove `enabled = false` from [alerting]; tune single rules in [[alerts]] instead",
        ));
    } else if !o
        .notifiers
        .iter()
        .any(|n| !matches!(n.kind, crate::config::observe::NotifierKind::Log))
    {
        out.push(cx.finding(rule, Severity::Warning, "notifiers",
            "alerts only go to levee's log: no webhook or command notifier pages anyone",
            "add a [[notifiers]] entry (kind = \"webhook\" for Alertmanager-compatible receivers, or kind = \"command\")"));
    }
}

fn journal_off(cx: &Ctx, rule: &Rule, out: &mut Vec<Finding>) {
    if !cx.cfg.listener.bind.ip().is_loopback() && cx.cfg.observe.journal.is_none() {
        out.push(cx.finding(rule, Severity::Warning, "journal.path",
            "the incident journal is off (no [journal] path)",
            "set [journal] path = \"/var/lib/levee/journal.db\"; `levee postmortem` then drafts the postmortem from it"));
    }
}
