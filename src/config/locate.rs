//! Where each key of a config file is written: `pools.web.max_concurrency` → line and column.
//!
//! Built once per load from the file text (a second, span-keeping parse), so reviewers such as
//! `levee check` can point at the line of a key, or at its table when the key is left out and a
//! default applies.

use std::collections::BTreeMap;
use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

/// Positions of the keys of one config file.
#[derive(Debug, Clone, Default)]
pub struct Locations {
    /// The file name as shown in messages.
    pub file: String,
    /// Dotted key path (arrays as `[i]`) → 1-based (line, column).
    keys: BTreeMap<String, (usize, usize)>,
}

/// Where a key is, or where it would go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    /// False when the key is not in the file and this is its enclosing table (or line 1).
    pub exact: bool,
}

impl Locations {
    /// Indexes `text`; a text that does not parse yields no positions (it never gets this far).
    pub fn index(text: &str, file: &str) -> Locations {
        let mut keys = BTreeMap::new();
        if let Ok(doc) = ImDocument::parse(text) {
            walk_table(doc.as_table(), "", text, &mut keys);
        }
        Locations {
            file: file.to_string(),
            keys,
        }
    }

    /// Whether `key` is written in the file.
    pub fn has(&self, key: &str) -> bool {
        self.keys.contains_key(key)
    }

    /// The position of `key`, else of the nearest enclosing key that is written, else line 1.
    pub fn locate(&self, key: &str) -> Location {
        let mut k = key;
        let mut exact = true;
        loop {
            if let Some(&(line, column)) = self.keys.get(k) {
                return Location {
                    line,
                    column,
                    exact,
                };
            }
            exact = false;
            match k.rfind(['.', '[']) {
                Some(i) => k = &k[..i],
                None => {
                    return Location {
                        line: 1,
                        column: 1,
                        exact: false,
                    };
                }
            }
        }
    }
}

fn pos(text: &str, span: Option<std::ops::Range<usize>>) -> Option<(usize, usize)> {
    span.map(|s| super::line_col(text, s.start))
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk_table(t: &Table, prefix: &str, text: &str, out: &mut BTreeMap<String, (usize, usize)>) {
    for (k, item) in t.iter() {
        let path = join(prefix, k);
        let key_pos = pos(text, t.key(k).and_then(|k| k.span()));
        let at = match item {
            Item::Table(sub) => pos(text, sub.span()).or(key_pos),
            _ => key_pos.or_else(|| pos(text, item.span())),
        };
        if let Some(p) = at {
            out.insert(path.clone(), p);
        }
        walk_item(item, &path, text, out);
    }
}

fn walk_item(item: &Item, path: &str, text: &str, out: &mut BTreeMap<String, (usize, usize)>) {
    match item {
        Item::Table(t) => walk_table(t, path, text, out),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let Some(at) = pos(text, t.span()) {
                    out.insert(p.clone(), at);
                }
                walk_table(t, &p, text, out);
            }
        }
        Item::Value(v) => walk_value(v, path, text, out),
        Item::None => {}
    }
}

fn walk_value(v: &Value, path: &str, text: &str, out: &mut BTreeMap<String, (usize, usize)>) {
    match v {
        Value::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if let Some(at) = pos(text, e.span()) {
                    out.insert(p.clone(), at);
                }
                walk_value(e, &p, text, out);
            }
        }
        Value::InlineTable(t) => walk_inline(t, path, text, out),
        _ => {}
    }
}

fn walk_inline(
    t: &InlineTable,
    prefix: &str,
    text: &str,
    out: &mut BTreeMap<String, (usize, usize)>,
) {
    for (k, v) in t.iter() {
        let path = join(prefix, k);
        if let Some(p) = pos(text, t.key(k).and_then(|k| k.span())).or_else(|| pos(text, v.span()))
        {
            out.insert(path.clone(), p);
        }
        walk_value(v, &path, text, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_tables_and_array_elements() {
        let text = "[listener]\nbind = \"x\"\n\n[pools.web]\nservers = [\n  \"a\",\n  { address = \"b\", weight = 2 },\n]\nmax_concurrency = 9\n[pools.web.retry]\nattempts = 3\n[[routes]]\npool = \"web\"\n";
        let l = Locations::index(text, "f.toml");
        assert_eq!(l.locate("listener.bind").line, 2);
        assert_eq!(l.locate("pools.web").line, 4);
        assert_eq!(l.locate("pools.web.servers[1]").line, 7);
        assert_eq!(l.locate("pools.web.servers[1].weight").line, 7);
        assert_eq!(l.locate("pools.web.max_concurrency").line, 9);
        assert_eq!(l.locate("pools.web.retry.attempts").line, 11);
        assert_eq!(l.locate("routes[0].pool").line, 13);
        let absent = l.locate("pools.web.queue_size");
        assert_eq!((absent.line, absent.exact), (4, false));
        assert_eq!(l.locate("admin.bind").line, 1);
        assert!(l.has("pools.web.max_concurrency") && !l.has("pools.web.queue_size"));
    }
}
