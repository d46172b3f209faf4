//! The configuration file, read and written from [`Config`]'s own definitions: its schema
//! (every key, its doc comment and its default, derived by `schemars` from the structs) and
//! the flags' (`clap`'s arguments of [`ServeArgs`]).
//!
//! - [`read`] collects every problem of a file at once (`natter config check`): a syntax
//!   error, then each unknown key (with the known one it is closest to) and each value of the
//!   wrong type, each left at its default so that reading goes on.
//! - [`default_toml`] writes every setting, commented, with its default
//!   (`natter config default`); unset ones and optional sections are commented out, so the
//!   file parses back into the defaults.

use std::collections::HashMap;
use std::fmt::Write as _;

use clap::Args as _;
use serde_json::Value as Json;

use super::{Config, Problem, ServeArgs};

/// The JSON schema of [`Config`].
fn schema() -> Json {
    serde_json::to_value(schemars::schema_for!(Config)).expect("a schema is JSON")
}

/// `s`, or the definition its `$ref` names.
fn resolve<'a>(root: &'a Json, s: &'a Json) -> &'a Json {
    match s.get("$ref").and_then(Json::as_str) {
        Some(r) => &root["$defs"][r.trim_start_matches("#/$defs/")],
        None => s,
    }
}

/// The object schema (a struct) behind `s`, through a `$ref` or an `Option`'s `anyOf`.
fn object<'a>(root: &'a Json, s: &'a Json) -> Option<&'a Json> {
    let s = resolve(root, s);
    if s.get("properties").is_some() {
        return Some(s);
    }
    s.get("anyOf")?
        .as_array()?
        .iter()
        .map(|alt| resolve(root, alt))
        .find(|alt| alt.get("properties").is_some())
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
}

/// Reads a file's text into a configuration and every problem found on the way. Values that
/// cannot be read are left at their defaults; a syntax error stops there.
pub(super) fn read(text: &str) -> (Config, Vec<Problem>) {
    let mut table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            let line = e.span().map_or(1, |s| text[..s.start].matches('\n').count() + 1);
            let why = e.message().to_owned();
            return (Config::default(), vec![Problem { key: format!("line {line}"), why }]);
        }
    };
    let root = schema();
    let mut problems = Vec::new();
    drop_unknown(&root, &root, &mut table, "", &mut problems);
    // Each value of the wrong type is named by its path, dropped, and the rest read again.
    let cfg = loop {
        let value = toml::Value::Table(table.clone());
        match serde_path_to_error::deserialize::<_, Config>(value) {
            Ok(cfg) => break cfg,
            Err(e) => {
                let keys: Vec<String> = e
                    .path()
                    .iter()
                    .map_while(|s| match s {
                        serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                        _ => None,
                    })
                    .collect();
                problems.push(Problem {
                    key: e.path().to_string(),
                    why: e.inner().message().to_owned(),
                });
                if !remove(&mut table, &keys) {
                    break Config::default();
                }
            }
        }
    };
    (cfg, problems)
}

/// Removes the keys `schema` does not know from `table`, each a problem.
fn drop_unknown(
    root: &Json,
    schema: &Json,
    table: &mut toml::Table,
    prefix: &str,
    out: &mut Vec<Problem>,
) {
    let Some(known) = schema["properties"].as_object() else { return };
    let mut unknown = Vec::new();
    for (key, value) in table.iter_mut() {
        match known.get(key.as_str()) {
            None => unknown.push(key.clone()),
            Some(prop) => {
                if let (Some(sub), toml::Value::Table(inner)) = (object(root, prop), value) {
                    drop_unknown(root, sub, inner, &join(prefix, key), out);
                }
            }
        }
    }
    for key in unknown {
        table.remove(&key);
        let closest = known
            .keys()
            .map(|k| (strsim::jaro_winkler(k, &key), k))
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let why = match closest {
            Some((_, k)) => format!("unknown key (did you mean {}?)", join(prefix, k)),
            None => "unknown key".to_owned(),
        };
        out.push(Problem { key: join(prefix, &key), why });
    }
}

/// Removes the value at `keys` (a path of table keys); false when there is none.
fn remove(table: &mut toml::Table, keys: &[String]) -> bool {
    match keys {
        [] => false,
        [last] => table.remove(last).is_some(),
        [first, rest @ ..] => match table.get_mut(first) {
            Some(toml::Value::Table(inner)) => remove(inner, rest) || table.remove(first).is_some(),
            Some(_) => table.remove(first).is_some(),
            None => false,
        },
    }
}

/// Each setting a flag sets (`limits.max_page`), with the flag and its variable.
fn flags(root: &Json) -> HashMap<String, (String, String)> {
    let cmd = ServeArgs::augment_args(clap::Command::new("natter"));
    let mut out = HashMap::new();
    for arg in cmd.get_arguments() {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else { continue };
        let id = arg.get_id().as_str();
        if let Some(key) = setting_of_flag(root, id) {
            out.insert(key, (long.to_owned(), env.to_string_lossy().into_owned()));
        }
    }
    out
}

/// The key of the setting flag `id` sets, if any.
fn setting_of_flag(root: &Json, id: &str) -> Option<String> {
    let limits = object(root, &root["properties"]["limits"])?;
    let rules = object(root, &root["properties"]["content_rules"])?;
    if root["properties"].get(id).is_some() && id != "limits" {
        Some(id.to_owned())
    } else if limits["properties"].get(id).is_some() {
        Some(format!("limits.{id}"))
    } else {
        let rule = id.strip_prefix("moderation_")?;
        rules["properties"].get(rule).map(|_| format!("content_rules.{rule}"))
    }
}

/// Every setting with its doc comment, flag and default, as TOML that reads back into
/// [`Config::default`].
pub fn default_toml() -> String {
    let root = schema();
    let defaults = serde_json::to_value(Config::default()).expect("the defaults are JSON");
    let flags = flags(&root);
    let mut out = String::from(
        "# Natter's configuration: every setting, with its default. Pass it with\n\
         # `natter serve --config FILE`; flags and NATTER_* variables override it.\n\
         # Lines starting `# key =` are unset by default.\n\n",
    );
    write_table(&root, &root, &defaults, "", &flags, false, &mut out);
    out
}

fn write_table(
    root: &Json,
    schema: &Json,
    defaults: &Json,
    prefix: &str,
    flags: &HashMap<String, (String, String)>,
    off: bool,
    out: &mut String,
) {
    let Some(props) = schema["properties"].as_object() else { return };
    let hash = if off { "# " } else { "" };
    let mut sections = Vec::new();
    for (key, prop) in props {
        let path = join(prefix, key);
        let default = defaults.get(key).or_else(|| prop.get("default")).unwrap_or(&Json::Null);
        if let Some(sub) = object(root, prop) {
            sections.push((path, prop, sub, default));
            continue;
        }
        comment(prop, out);
        if let Some((long, env)) = flags.get(&path) {
            let _ = writeln!(out, "# (flag --{long}, variable {env})");
        }
        match toml_value(default) {
            Some(value) => {
                let _ = writeln!(out, "{hash}{key} = {value}\n");
            }
            None => {
                let _ = writeln!(out, "# {key} = <{}>\n", type_name(root, prop));
            }
        }
    }
    for (path, prop, sub, default) in sections {
        comment(prop, out);
        let off = off || default.is_null();
        let _ = writeln!(out, "{}[{path}]\n", if off { "# " } else { "" });
        write_table(root, sub, default, &path, flags, off, out);
    }
}

/// A property's doc comment as `#` lines of at most 92 columns.
fn comment(prop: &Json, out: &mut String) {
    let Some(text) = prop.get("description").and_then(Json::as_str) else { return };
    for paragraph in text.split("\n\n") {
        let mut line = String::from("#");
        for word in paragraph.split_whitespace() {
            if line.len() + 1 + word.len() > 92 && line.len() > 1 {
                let _ = writeln!(out, "{line}");
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        let _ = writeln!(out, "{line}");
    }
}

/// A default as a TOML value; `None` for an unset one.
fn toml_value(json: &Json) -> Option<String> {
    if json.is_null() {
        return None;
    }
    let value = toml::Value::try_from(json).ok()?;
    Some(value.to_string())
}

/// What an unset setting holds, for its commented line.
fn type_name(root: &Json, prop: &Json) -> String {
    let prop = resolve(root, prop);
    let types: Vec<&str> = match &prop["type"] {
        Json::String(t) => vec![t.as_str()],
        Json::Array(ts) => ts.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    };
    types.into_iter().find(|t| *t != "null").unwrap_or("value").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn every_problem_of_a_file_is_named_at_once() {
        let text = "lissten = \"127.0.0.1:1\"\n\
                    log_format = 7\n\
                    drain_timeout_ms = 100\n\
                    [limits]\n\
                    max_page = \"many\"\n\
                    max_pgae = 3\n\
                    default_page = 10\n\
                    [push]\n\
                    window_ms = -1\n\
                    [email]\n\
                    from = \"a@b\"\n";
        let (cfg, problems) = read(text);
        let mut got = keys(&problems);
        got.sort_unstable();
        assert_eq!(
            got,
            [
                "email",
                "limits.max_page",
                "limits.max_pgae",
                "lissten",
                "log_format",
                "push.window_ms"
            ],
            "{problems:#?}"
        );
        let typo = problems.iter().find(|p| p.key == "lissten").unwrap();
        assert!(typo.why.contains("did you mean listen"), "{typo}");
        let missing = problems.iter().find(|p| p.key == "email").unwrap();
        assert!(missing.why.contains("smtp_url"), "{missing}");
        // What could be read was read.
        assert_eq!(cfg.drain_timeout_ms, 100);
        assert_eq!(cfg.limits.default_page, 10);
        let syntax = read("[limits\nmax_page = 1\n").1;
        assert_eq!(keys(&syntax), ["line 1"], "{syntax:?}");
        let syntax = read("listen = \"127.0.0.1:1\"\n= 2\n").1;
        assert_eq!(keys(&syntax), ["line 2"], "an error at the start of a line: {syntax:?}");
    }

    #[test]
    fn the_default_file_reads_back_into_the_defaults() {
        let text = default_toml();
        let (cfg, problems) = read(&text);
        assert!(problems.is_empty(), "{problems:?}");
        let json = |c: &Config| serde_json::to_value(c).unwrap();
        assert_eq!(json(&cfg), json(&Config::default()));
        // Every setting is in it, documented, with its flag where it has one.
        assert!(text.contains("\n[limits]\n") && text.contains("\n# [email]\n"), "{text}");
        assert!(text.contains("# Largest WebSocket message or frame accepted"), "{text}");
        assert!(text.contains("# (flag --max-frame-bytes, variable NATTER_MAX_FRAME_BYTES)"));
        assert!(text.contains("\nmax_frame_bytes = 65536\n"), "{text}");
        assert!(text.contains("\n# database_url = <string>\n"), "{text}");
        assert!(text.contains("\n# smtp_url = <string>\n"), "{text}");
    }

    #[test]
    fn every_flag_sets_a_setting_of_the_file() {
        let root = schema();
        let cmd = ServeArgs::augment_args(clap::Command::new("natter"));
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if id != "config" {
                assert!(setting_of_flag(&root, id).is_some(), "--{id} sets no setting");
            }
        }
    }
}
