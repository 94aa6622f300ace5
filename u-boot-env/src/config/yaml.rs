//! libubootenv's YAML configuration, read with the same rules its event-driven parser applies.
//!
//! ```yaml
//! uboot:                       # a namespace; fw_printenv uses the first one unless -m names one
//!   size: 0x4000               # strtoull(.., 0): 0x hex, leading 0 octal, trailing text ignored
//!   lockfile: /var/lock/fw_printenv.lock
//!   writelist: [bootcmd:sw]    # name:flags; only these variables may change
//!   devices:                   # one copy, or two for a redundant environment
//!     - path: /dev/mmcblk0
//!       offset: 0x3F0000       # may be negative: from the end of a block device
//!     - path: /dev/mmcblk0
//!       offset: 0x3F4000
//!       sectorsize: 0x10000
//!       disablelock: yes       # only the exact text "yes" counts
//! ```
//!
//! libubootenv reads `size` when it meets each device's `path`, so `size` must come first; it
//! rejects keys it does not know (including `unlock`, which its own documentation shows) and
//! aliases. abup refuses the same files, and also duplicate keys, namespaces and more than two
//! devices (on which libubootenv silently keeps the last value, the first namespace, or writes
//! past its array).

use std::path::PathBuf;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::Marker;

use super::cnum::strtoull_auto;
use super::{check_env_size, Config, CopyConfig, WritelistEntry};
use crate::error::{Error, Result};

/// Deepest nesting built; a valid configuration needs four levels (namespaces, settings, devices,
/// device keys), and a bound keeps hostile input from exhausting the stack.
const MAX_DEPTH: usize = 8;

#[derive(Debug)]
struct Node {
    kind: Kind,
    mark: Marker,
}

#[derive(Debug)]
enum Kind {
    Scalar(String),
    Sequence(Vec<Node>),
    Mapping(Vec<(Node, Node)>),
}

fn error_at(mark: Marker, reason: impl Into<String>) -> Error {
    Error::Yaml {
        line: mark.line(),
        column: mark.col() + 1,
        reason: reason.into(),
    }
}

/// The documents of the stream as trees, built without recursion.
fn documents(text: &str) -> Result<Vec<Node>> {
    let mut parser = Parser::new_from_str(text);
    let mut documents = Vec::new();
    let mut open: Vec<(Marker, bool, Vec<Node>)> = Vec::new();
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| error_at(*e.marker(), e.info()))?;
        let node = match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::DocumentStart | Event::DocumentEnd | Event::Nothing => {
                continue
            }
            Event::Alias(_) => {
                return Err(error_at(
                    mark,
                    "aliases are not supported (libubootenv rejects them)",
                ))
            }
            Event::Scalar(value, ..) => Node {
                kind: Kind::Scalar(value),
                mark,
            },
            Event::SequenceStart(..) | Event::MappingStart(..) => {
                if open.len() >= MAX_DEPTH {
                    return Err(error_at(mark, "nested too deeply for a configuration"));
                }
                open.push((mark, matches!(event, Event::MappingStart(..)), Vec::new()));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((start, is_mapping, children)) = open.pop() else {
                    return Err(error_at(mark, "unbalanced collection"));
                };
                let kind = if is_mapping {
                    let mut pairs = Vec::with_capacity(children.len() / 2);
                    let mut children = children.into_iter();
                    while let (Some(key), Some(value)) = (children.next(), children.next()) {
                        pairs.push((key, value));
                    }
                    Kind::Mapping(pairs)
                } else {
                    Kind::Sequence(children)
                };
                Node { kind, mark: start }
            }
        };
        match open.last_mut() {
            Some((_, _, children)) => children.push(node),
            None => documents.push(node),
        }
    }
    Ok(documents)
}

fn scalar<'n>(node: &'n Node, what: &str) -> Result<&'n str> {
    match &node.kind {
        Kind::Scalar(s) => Ok(s),
        _ => Err(error_at(
            node.mark,
            format!("{what} must be a single value"),
        )),
    }
}

fn mapping<'n>(node: &'n Node, what: &str) -> Result<&'n [(Node, Node)]> {
    match &node.kind {
        Kind::Mapping(pairs) => Ok(pairs),
        _ => Err(error_at(node.mark, format!("{what} must be a mapping"))),
    }
}

fn sequence<'n>(node: &'n Node, what: &str) -> Result<&'n [Node]> {
    match &node.kind {
        Kind::Sequence(items) => Ok(items),
        _ => Err(error_at(node.mark, format!("{what} must be a list"))),
    }
}

/// The keys of a mapping, refusing duplicates.
fn keys<'n>(pairs: &'n [(Node, Node)], what: &str) -> Result<Vec<(&'n str, &'n Node)>> {
    let mut out: Vec<(&str, &Node)> = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        let name = scalar(key, &format!("a key of {what}"))?;
        if out.iter().any(|(seen, _)| *seen == name) {
            return Err(error_at(
                key.mark,
                format!("{name:?} appears twice in {what}"),
            ));
        }
        out.push((name, value));
    }
    Ok(out)
}

/// A number as libubootenv reads it with `strtoull(value, NULL, 0)`.
fn number(node: &Node, what: &str) -> Result<u64> {
    let text = scalar(node, what)?;
    let (value, rest) = strtoull_auto(text);
    if !rest.trim().is_empty() {
        log::warn!(
            "YAML line {}: {what} {text:?} reads as {value} (libubootenv ignores {rest:?})",
            node.mark.line()
        );
    }
    Ok(value)
}

#[derive(Debug)]
struct Namespace {
    name: String,
    size: u64,
    lockfile: Option<PathBuf>,
    devices: Vec<CopyConfig>,
    writelist: Vec<WritelistEntry>,
}

fn device(node: &Node, ns: &str) -> Result<CopyConfig> {
    let what = format!("a device of namespace {ns:?}");
    let mut path = None;
    let mut copy = CopyConfig::new("", 0);
    for (key, value) in keys(mapping(node, &what)?, &what)? {
        match key {
            "path" => path = Some(PathBuf::from(scalar(value, "path")?)),
            "offset" => copy.offset = number(value, "offset")? as i64,
            "sectorsize" => copy.sector_size = Some(number(value, "sectorsize")?),
            "disablelock" => copy.disable_lock = scalar(value, "disablelock")? == "yes",
            other => {
                return Err(error_at(
                    value.mark,
                    format!("unknown device key {other:?} (libubootenv accepts path, offset, sectorsize, disablelock)"),
                ))
            }
        }
    }
    copy.path = path.ok_or_else(|| error_at(node.mark, format!("{what} has no path")))?;
    Ok(copy)
}

fn namespace(name: &str, node: &Node) -> Result<Namespace> {
    let what = format!("namespace {name:?}");
    let mut size = None;
    let mut lockfile = None;
    let mut devices = Vec::new();
    let mut writelist = Vec::new();
    for (key, value) in keys(mapping(node, &what)?, &what)? {
        match key {
            "size" => size = Some((number(value, "size")?, value.mark)),
            "lockfile" => lockfile = Some(PathBuf::from(scalar(value, "lockfile")?)),
            "devices" => {
                if size.is_none() {
                    return Err(error_at(
                        value.mark,
                        format!("`size` must come before `devices` in {what}: libubootenv gives each device the size read so far"),
                    ));
                }
                for item in sequence(value, "devices")? {
                    if devices.len() == 2 {
                        return Err(error_at(
                            item.mark,
                            format!("{what} has more than two devices: an environment has one copy, or two when redundant"),
                        ));
                    }
                    devices.push(device(item, name)?);
                }
            }
            "writelist" => {
                for item in sequence(value, "writelist")? {
                    let text = scalar(item, "a writelist entry")?;
                    let entry = match text.split_once(':') {
                        Some((n, f)) if !n.is_empty() && !f.is_empty() => WritelistEntry {
                            name: n.to_string(),
                            flags: f.to_string(),
                        },
                        _ => {
                            return Err(error_at(
                                item.mark,
                                format!("writelist entry {text:?} must be name:flags"),
                            ))
                        }
                    };
                    if writelist.iter().any(|w: &WritelistEntry| w.name == entry.name) {
                        return Err(error_at(
                            item.mark,
                            format!("{:?} appears twice in the writelist", entry.name),
                        ));
                    }
                    writelist.push(entry);
                }
            }
            other => {
                return Err(error_at(
                    value.mark,
                    format!("unknown key {other:?} in {what} (libubootenv accepts size, lockfile, writelist, devices)"),
                ))
            }
        }
    }
    let Some((size, size_mark)) = size else {
        return Err(error_at(node.mark, format!("{what} has no size")));
    };
    if devices.is_empty() {
        return Err(error_at(node.mark, format!("{what} has no devices")));
    }
    check_env_size(size, devices.len()).map_err(|reason| error_at(size_mark, reason))?;
    Ok(Namespace {
        name: name.to_string(),
        size,
        lockfile,
        devices,
        writelist,
    })
}

/// Parses every namespace (a mistake in any of them fails the file, as in libubootenv) and returns
/// the one asked for, or the first.
pub(super) fn parse(text: &str, wanted: Option<&str>) -> Result<Config> {
    let mut namespaces: Vec<Namespace> = Vec::new();
    for document in documents(text)? {
        let what = "the top level (namespace names and their settings)";
        for (name, value) in keys(mapping(&document, what)?, what)? {
            if namespaces.iter().any(|ns| ns.name == name) {
                return Err(error_at(
                    value.mark,
                    format!("namespace {name:?} is defined twice"),
                ));
            }
            namespaces.push(namespace(name, value)?);
        }
    }
    if namespaces.is_empty() {
        return Err(Error::ConfigEmpty);
    }
    let index = match wanted {
        None => 0,
        Some(name) => namespaces
            .iter()
            .position(|ns| ns.name == name)
            .ok_or_else(|| Error::NamespaceNotFound {
                name: name.to_string(),
                available: namespaces.iter().map(|ns| ns.name.clone()).collect(),
            })?,
    };
    let ns = namespaces.swap_remove(index);
    let mut config = Config::new(ns.devices, ns.size as usize)?;
    config.lockfile = ns.lockfile;
    config.writelist = ns.writelist;
    config.namespace = Some(ns.name);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::Layout;

    const EXAMPLE: &str = "\
uboot:
  size : 0x4000
  lockfile : /var/lock/fw_printenv.lock
  writelist:
    - var1:sw
    - var2:dw
  devices:
    - path : /dev/mmcblk0
      offset : 0xA0000
      sectorsize : 0x10000
    - path : /dev/mmcblk0
      offset : -0x4000
      disablelock : yes

appvar:
  size : 010000
  lockfile : /var/lock/appvar.lock
  devices:
    - path : /dev/mtd1
      offset : 0
";

    #[test]
    fn first_namespace_by_default() {
        let c = Config::parse(EXAMPLE, None).unwrap();
        assert_eq!(c.namespace(), Some("uboot"));
        assert_eq!(c.layout(), Layout::Redundant);
        assert_eq!(c.env_size(), 0x4000);
        assert_eq!(c.copies()[0].offset, 0xA0000);
        assert_eq!(c.copies()[0].sector_size, Some(0x10000));
        assert!(!c.copies()[0].disable_lock);
        assert_eq!(c.copies()[1].offset, -0x4000);
        assert!(c.copies()[1].disable_lock);
        assert_eq!(c.writelist().len(), 2);
        assert_eq!(c.writelist()[1].flags, "dw");
    }

    #[test]
    fn namespace_by_name() {
        let c = Config::parse(EXAMPLE, Some("appvar")).unwrap();
        assert_eq!(c.layout(), Layout::Single);
        // strtoull with base 0: a leading 0 is octal.
        assert_eq!(c.env_size(), 0o10000);
        assert_eq!(c.lockfile(), std::path::Path::new("/var/lock/appvar.lock"));
        match Config::parse(EXAMPLE, Some("nope")) {
            Err(Error::NamespaceNotFound { available, .. }) => {
                assert_eq!(available, ["uboot", "appvar"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_follow_strtoull() {
        let c = Config::parse(
            "a:\n  size: \"0x100 bytes\"\n  devices:\n    - {path: /f, offset: 12abc}\n",
            None,
        )
        .unwrap();
        assert_eq!(c.env_size(), 0x100);
        assert_eq!(c.copies()[0].offset, 12);
        let c = Config::parse("a:\n  size: 256\n  devices: [{path: /f}]\n", None).unwrap();
        assert_eq!((c.env_size(), c.copies()[0].offset), (256, 0));
    }

    #[test]
    fn multiple_documents_add_namespaces() {
        let text = "a:\n  size: 0x100\n  devices: [{path: /a}]\n---\nb:\n  size: 0x200\n  devices: [{path: /b}]\n";
        assert_eq!(Config::parse(text, Some("b")).unwrap().env_size(), 0x200);
    }

    fn yaml_error(text: &str) -> (usize, String) {
        match Config::parse(text, None) {
            Err(Error::Yaml { line, reason, .. }) => (line, reason),
            other => panic!("expected a YAML error, got {other:?}"),
        }
    }

    #[test]
    fn refusals_name_the_line() {
        let (line, reason) = yaml_error("a:\n  devices: [{path: /a}]\n  size: 0x100\n");
        assert_eq!(line, 2);
        assert!(reason.contains("must come before"), "{reason}");
        let (line, reason) =
            yaml_error("a:\n  size: 0x100\n  devices:\n    - path: /dev/mtd0\n      unlock: yes\n");
        assert_eq!(line, 5);
        assert!(reason.contains("\"unlock\""), "{reason}");
        let (_, reason) = yaml_error("a:\n  size: 0x100\n  sise: 1\n  devices: [{path: /a}]\n");
        assert!(reason.contains("\"sise\""), "{reason}");
        let (_, reason) = yaml_error("a:\n  size: 0x100\n  size: 0x200\n  devices: [{path: /a}]\n");
        assert!(reason.contains("twice"), "{reason}");
        let (_, reason) = yaml_error("a:\n  size: 0x100\n  devices: [{offset: 0}]\n");
        assert!(reason.contains("no path"), "{reason}");
        let (_, reason) =
            yaml_error("a:\n  size: 0x100\n  devices: [{path: /a}, {path: /b}, {path: /c}]\n");
        assert!(reason.contains("more than two"), "{reason}");
        let (_, reason) = yaml_error("a:\n  size: 0x100\n");
        assert!(reason.contains("no devices"), "{reason}");
        let (_, reason) = yaml_error("a:\n  devices: []\n");
        assert!(
            reason.contains("must come before") || reason.contains("no size"),
            "{reason}"
        );
        let (line, reason) = yaml_error("a:\n  size: 0\n  devices: [{path: /a}]\n");
        assert_eq!(line, 2);
        assert!(reason.contains("outside"), "{reason}");
        let (_, reason) =
            yaml_error("a:\n  size: 0x100\n  writelist: [novalue]\n  devices: [{path: /a}]\n");
        assert!(reason.contains("name:flags"), "{reason}");
        let (_, reason) = yaml_error("a: &x\n  size: 0x100\n  devices: [{path: /a}]\nb: *x\n");
        assert!(reason.contains("aliases"), "{reason}");
        let (_, reason) = yaml_error("a: [1]\n");
        assert!(reason.contains("must be a mapping"), "{reason}");
        let (_, reason) = yaml_error("a:\n  size: 0x100\n  devices: [{path: /a}]\n---\nplain\n");
        assert!(reason.contains("must be a mapping"), "{reason}");
        let (_, reason) = yaml_error("a: {b: {c: {d: {e: {f: {g: {h: {i: 1}}}}}}}}\n");
        assert!(reason.contains("nested"), "{reason}");
        let (_, reason) = yaml_error("a:\n  size: [\n");
        assert!(!reason.is_empty());
    }

    #[test]
    fn hostile_nesting_is_refused_without_exhausting_the_stack() {
        let limit = crate::MAX_CONFIG_LEN - 1;
        for text in [
            format!("a: {}", "[".repeat(limit - 3)),
            format!("a: {}", "{a: ".repeat(limit / 4 - 1)),
            "- ".repeat(limit / 2),
        ] {
            assert!(Config::parse(&text, None).is_err());
        }
        let mut indented = String::new();
        for depth in 0..200 {
            indented.push_str(&" ".repeat(depth));
            indented.push_str("a:\n");
        }
        assert!(Config::parse(&indented, None).is_err());
    }
}
