//! The wildcard subscriptions, indexed by segment. Which of them match a
//! channel costs the channel's depth and the matches found, not a pass
//! over every pattern: a client that opened streams on thousands of
//! patterns once (each kept for `--member-ttl`) made every publish, and
//! the hub's one writer, slower in proportion (a probe: 54 ms of CPU per
//! publish with 128,000 patterns), and `/admin/channels` cost channels
//! times patterns.

use std::collections::HashMap;

use crate::name::{ChannelName, Pattern};

/// A trie of patterns by segment: a literal segment, `*` (one segment),
/// and a trailing `**` (one or more segments).
#[derive(Debug, Default)]
pub(in crate::hub) struct WildIndex {
    root: Node,
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    /// Where `*` leads.
    one: Option<Box<Node>>,
    /// The pattern whose segments end here.
    end: Option<Pattern>,
    /// The pattern of this node's segments followed by `**`.
    rest: Option<Pattern>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.one.is_none() && self.end.is_none() && self.rest.is_none()
    }
}

impl WildIndex {
    /// Adds `pattern`; whether it was not there yet.
    pub(in crate::hub) fn insert(&mut self, pattern: Pattern) -> bool {
        let Self { root, len } = self;
        let text = pattern.as_str().to_owned();
        let mut segments = text.split('.').peekable();
        let mut node = root;
        let slot = loop {
            let Some(segment) = segments.next() else {
                break &mut node.end;
            };
            if segment == "**" && segments.peek().is_none() {
                break &mut node.rest;
            }
            node = if segment == "*" {
                node.one.get_or_insert_with(Box::default)
            } else {
                node.literal.entry(segment.into()).or_default()
            };
        };
        if slot.is_some() {
            return false;
        }
        *slot = Some(pattern);
        *len += 1;
        true
    }

    /// Takes `pattern` out (and the nodes only it needed); whether it was
    /// there.
    pub(in crate::hub) fn remove(&mut self, pattern: &Pattern) -> bool {
        let segments: Vec<&str> = pattern.as_str().split('.').collect();
        let removed = remove_in(&mut self.root, &segments);
        if removed {
            self.len -= 1;
        }
        removed
    }

    /// How many patterns there are.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` with each pattern matching `channel`, each once.
    pub(in crate::hub) fn for_each_match<'a>(
        &'a self,
        channel: &ChannelName,
        mut f: impl FnMut(&'a Pattern),
    ) {
        let segments: Vec<&str> = channel.segments().collect();
        visit(&self.root, &segments, &mut f);
    }

    /// The patterns matching `channel`.
    pub(in crate::hub) fn matching(&self, channel: &ChannelName) -> Vec<&Pattern> {
        let mut out = Vec::new();
        self.for_each_match(channel, |p| out.push(p));
        out
    }

    /// Every pattern, in no particular order.
    pub(in crate::hub) fn iter(&self) -> impl Iterator<Item = &Pattern> {
        let mut out = Vec::with_capacity(self.len);
        collect(&self.root, &mut out);
        out.into_iter()
    }
}

fn visit<'a>(node: &'a Node, rest: &[&str], f: &mut impl FnMut(&'a Pattern)) {
    let Some((first, tail)) = rest.split_first() else {
        if let Some(p) = &node.end {
            f(p);
        }
        return;
    };
    // `**` takes one segment or more: whatever is left.
    if let Some(p) = &node.rest {
        f(p);
    }
    if let Some(next) = node.literal.get(*first) {
        visit(next, tail, f);
    }
    if let Some(next) = &node.one {
        visit(next, tail, f);
    }
}

fn remove_in(node: &mut Node, segments: &[&str]) -> bool {
    let Some((first, tail)) = segments.split_first() else {
        return node.end.take().is_some();
    };
    if *first == "**" && tail.is_empty() {
        return node.rest.take().is_some();
    }
    if *first == "*" {
        let Some(next) = node.one.as_deref_mut() else {
            return false;
        };
        let removed = remove_in(next, tail);
        if next.is_empty() {
            node.one = None;
        }
        return removed;
    }
    let Some(next) = node.literal.get_mut(*first) else {
        return false;
    };
    let removed = remove_in(next, tail);
    if next.is_empty() {
        node.literal.remove(*first);
    }
    removed
}

fn collect<'a>(node: &'a Node, out: &mut Vec<&'a Pattern>) {
    out.extend(node.end.iter());
    out.extend(node.rest.iter());
    for next in node.literal.values() {
        collect(next, out);
    }
    if let Some(next) = &node.one {
        collect(next, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pat(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    fn ch(s: &str) -> ChannelName {
        ChannelName::new(s).unwrap()
    }

    fn sorted(v: Vec<&Pattern>) -> Vec<String> {
        let mut v: Vec<String> = v.into_iter().map(|p| p.as_str().to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn finds_the_patterns_a_channel_matches() {
        let mut index = WildIndex::default();
        for p in ["orders.*", "orders.**", "*.eu", "**", "*.*.paris", "shop.*"] {
            assert!(index.insert(pat(p)));
        }
        assert!(!index.insert(pat("orders.*")), "already there");
        assert_eq!(index.len(), 6);
        assert_eq!(
            sorted(index.matching(&ch("orders.eu"))),
            ["**", "*.eu", "orders.*", "orders.**"]
        );
        assert_eq!(
            sorted(index.matching(&ch("orders.eu.paris"))),
            ["**", "*.*.paris", "orders.**"]
        );
        assert_eq!(sorted(index.matching(&ch("orders"))), ["**"]);
        assert!(index.remove(&pat("**")));
        assert!(!index.remove(&pat("**")));
        assert!(!index.remove(&pat("nothing.*")));
        assert!(index.matching(&ch("orders")).is_empty());
        for p in ["orders.*", "orders.**", "*.eu", "*.*.paris", "shop.*"] {
            assert!(index.remove(&pat(p)), "{p}");
        }
        assert_eq!(index.len(), 0);
        assert!(index.root.is_empty(), "no node is left behind");
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[ab]".prop_map(String::from),
            1 => Just("*".to_owned()),
        ]
    }

    fn pattern() -> impl Strategy<Value = String> {
        (prop::collection::vec(segment(), 1..4), any::<bool>()).prop_map(|(mut segs, rest)| {
            if rest {
                segs.push("**".into());
            }
            segs.join(".")
        })
    }

    proptest! {
        /// The index finds exactly what `Pattern::matches` says, after any
        /// sequence of insertions and removals.
        #[test]
        fn agrees_with_pattern_matches(
            ops in prop::collection::vec((pattern(), any::<bool>()), 0..40),
            channels in prop::collection::vec(prop::collection::vec("[abc]", 1..6), 1..20),
        ) {
            let mut index = WildIndex::default();
            let mut all: Vec<Pattern> = Vec::new();
            for (p, add) in ops {
                let p = pat(&p);
                if p.exact().is_some() {
                    continue;
                }
                if add {
                    prop_assert_eq!(index.insert(p.clone()), !all.contains(&p));
                    if !all.contains(&p) {
                        all.push(p);
                    }
                } else {
                    prop_assert_eq!(index.remove(&p), all.contains(&p));
                    all.retain(|q| q != &p);
                }
            }
            prop_assert_eq!(index.len(), all.len());
            prop_assert_eq!(sorted(index.iter().collect()), sorted(all.iter().collect()));
            for segs in channels {
                let c = ch(&segs.join("."));
                let want: Vec<&Pattern> = all.iter().filter(|p| p.matches(&c)).collect();
                prop_assert_eq!(sorted(index.matching(&c)), sorted(want));
            }
        }
    }
}
