//! The copy-on-write B+tree as a write transaction sees it: a root that is either a clean page
//! id or a dirty node copied out of its page. Changing a node copies it and every ancestor out
//! (the leaf-to-root path); splits and merges happen eagerly on the dirty nodes, and `flush`
//! writes every dirty node exactly once at commit, children before parents.

use std::sync::Arc;

use super::format::{extent_pages, BRANCH_ENTRY_FIXED, PAGE_BYTES, PAYLOAD_BYTES};
use super::node::{Child, DirtyNode, Page, Val, ValRef};
use super::Result;

/// Where the tree reads clean pages from (the store's cache-backed, checksum-verifying read).
pub trait PageSource {
    fn page(&self, id: u64) -> Result<Arc<Page>>;
}

/// A node smaller than this after a delete is merged with a sibling when the two fit a page.
const MERGE_BELOW_BYTES: usize = PAYLOAD_BYTES / 4;

/// A tree being changed by one transaction, and the pages and extents the change superseded.
#[derive(Debug)]
pub struct Tree {
    pub root: Option<Child>,
    /// Levels: 0 empty, 1 a lone leaf, ...
    pub height: u32,
    pub entries: u64,
    /// `(page id, bytes)` of every page or extent the latest root reaches and this tree no
    /// longer will; subtracted from segment live bytes when the commit is durable.
    pub freed: Vec<(u64, u64)>,
}

impl Tree {
    pub fn new(root: u64, height: u32, entries: u64) -> Tree {
        Tree {
            root: (root != 0).then_some(Child::Clean(root)),
            height,
            entries,
            freed: Vec::new(),
        }
    }

    pub fn get(&self, src: &dyn PageSource, key: &[u8]) -> Result<Option<Val>> {
        let Some(mut cur) = self.root.as_ref() else {
            return Ok(None);
        };
        loop {
            match cur {
                Child::Dirty(node) => match &**node {
                    DirtyNode::Leaf(entries) => {
                        return Ok(entries
                            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
                            .ok()
                            .map(|i| entries[i].1.clone()))
                    }
                    DirtyNode::Branch { seps, children, .. } => {
                        cur = &children[seps.partition_point(|s| s.as_slice() <= key)];
                    }
                },
                Child::Clean(id) => return clean_get(src, *id, key),
            }
        }
    }

    pub fn put(&mut self, src: &dyn PageSource, key: &[u8], val: Val) -> Result<()> {
        let Some(root) = self.root.as_mut() else {
            self.root = Some(Child::Dirty(Box::new(DirtyNode::Leaf(vec![(
                key.to_vec(),
                val,
            )]))));
            self.height = 1;
            self.entries = 1;
            return Ok(());
        };
        let mut added = false;
        let mut extra = insert(root, src, key, val, &mut self.freed, &mut added, true)?;
        if added {
            self.entries += 1;
        }
        while !extra.is_empty() {
            let old = self.root.take().unwrap();
            let (seps, more): (Vec<_>, Vec<_>) = extra.into_iter().unzip();
            let mut children = vec![old];
            children.extend(more.into_iter().map(|n| Child::Dirty(Box::new(n))));
            let mut node = DirtyNode::Branch {
                level: u8::try_from(self.height).expect("tree height fits a byte"),
                seps,
                children,
            };
            extra = node.split(false);
            self.root = Some(Child::Dirty(Box::new(node)));
            self.height += 1;
        }
        Ok(())
    }

    /// Returns whether the key existed. A missing key dirties nothing.
    pub fn delete(&mut self, src: &dyn PageSource, key: &[u8]) -> Result<bool> {
        if self.get(src, key)?.is_none() {
            return Ok(false);
        }
        remove(self.root.as_mut().unwrap(), src, key, &mut self.freed)?;
        self.entries -= 1;
        // Collapse a root branch with one child and drop an empty root leaf.
        while let Some(Child::Dirty(node)) = self.root.as_mut() {
            match &mut **node {
                DirtyNode::Branch { children, .. } if children.len() == 1 => {
                    self.root = children.pop();
                    self.height -= 1;
                }
                DirtyNode::Branch { children, .. } if children.is_empty() => {
                    self.root = None;
                    self.height = 0;
                }
                DirtyNode::Leaf(entries) if entries.is_empty() => {
                    self.root = None;
                    self.height = 0;
                }
                _ => break,
            }
        }
        Ok(true)
    }

    /// The clean page id the path towards `key` reaches at `level`, if that node is still
    /// clean (not yet copied by this transaction). The cleaner uses this to decide whether a
    /// page it found in a victim segment is live.
    pub fn clean_id_at(&self, src: &dyn PageSource, key: &[u8], level: u8) -> Result<Option<u64>> {
        let Some(mut cur) = self.root.as_ref() else {
            return Ok(None);
        };
        let mut lv = self.height.saturating_sub(1);
        if u32::from(level) > lv {
            return Ok(None);
        }
        loop {
            match cur {
                Child::Dirty(node) => {
                    if lv == u32::from(level) {
                        return Ok(None);
                    }
                    let DirtyNode::Branch { seps, children, .. } = &**node else {
                        unreachable!("a leaf above level 0")
                    };
                    cur = &children[seps.partition_point(|s| s.as_slice() <= key)];
                    lv -= 1;
                }
                Child::Clean(id) => {
                    let mut id = *id;
                    while lv > u32::from(level) {
                        let page = src.page(id)?;
                        id = page.child(page.child_index(key));
                        lv -= 1;
                    }
                    return Ok(Some(id));
                }
            }
        }
    }

    /// Copies out every node on the path towards `key` down to `level`, so that commit writes
    /// them to new locations (the cleaner moving a live page).
    pub fn dirty_path(&mut self, src: &dyn PageSource, key: &[u8], level: u8) -> Result<()> {
        let mut lv = self.height - 1;
        let mut cur = self.root.as_mut().expect("path in a non-empty tree");
        loop {
            let node = make_dirty(cur, src, &mut self.freed)?;
            if lv == u32::from(level) {
                return Ok(());
            }
            let DirtyNode::Branch { seps, children, .. } = node else {
                unreachable!("a leaf above level 0")
            };
            cur = &mut children[seps.partition_point(|s| s.as_slice() <= key)];
            lv -= 1;
        }
    }
}

fn clean_get(src: &dyn PageSource, mut id: u64, key: &[u8]) -> Result<Option<Val>> {
    loop {
        let page = src.page(id)?;
        if page.is_leaf() {
            return Ok(page.search(key).ok().map(|i| match page.value(i) {
                ValRef::Inline(v) => Val::Inline(v.to_vec()),
                ValRef::Overflow { id, len } => Val::Overflow { id, len },
            }));
        }
        id = page.child(page.child_index(key));
    }
}

fn make_dirty<'c>(
    child: &'c mut Child,
    src: &dyn PageSource,
    freed: &mut Vec<(u64, u64)>,
) -> Result<&'c mut DirtyNode> {
    if let Child::Clean(id) = *child {
        let page = src.page(id)?;
        *child = Child::Dirty(Box::new(DirtyNode::from_page(&page)));
        freed.push((id, PAGE_BYTES as u64));
    }
    match child {
        Child::Dirty(node) => Ok(node),
        Child::Clean(_) => unreachable!(),
    }
}

fn free_val(key: &[u8], v: &Val, freed: &mut Vec<(u64, u64)>) {
    if let Val::Overflow { id, len } = v {
        let pages = extent_pages(key.len(), *len as usize);
        freed.push((*id, u64::from(pages) * PAGE_BYTES as u64));
    }
}

/// `rightmost`: `child` is the last node of its level, where ascending keys arrive.
fn insert(
    child: &mut Child,
    src: &dyn PageSource,
    key: &[u8],
    val: Val,
    freed: &mut Vec<(u64, u64)>,
    added: &mut bool,
    rightmost: bool,
) -> Result<Vec<(Vec<u8>, DirtyNode)>> {
    let node = make_dirty(child, src, freed)?;
    let appending = match node {
        DirtyNode::Leaf(entries) => {
            match entries.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                Ok(i) => {
                    free_val(key, &entries[i].1, freed);
                    entries[i].1 = val;
                    false
                }
                Err(i) => {
                    entries.insert(i, (key.to_vec(), val));
                    *added = true;
                    rightmost && i + 1 == entries.len()
                }
            }
        }
        DirtyNode::Branch { seps, children, .. } => {
            let i = seps.partition_point(|s| s.as_slice() <= key);
            let last = i + 1 == children.len();
            let extra = insert(
                &mut children[i],
                src,
                key,
                val,
                freed,
                added,
                rightmost && last,
            )?;
            let appending = rightmost && last;
            for (j, (sep, n)) in extra.into_iter().enumerate() {
                seps.insert(i + j, sep);
                children.insert(i + 1 + j, Child::Dirty(Box::new(n)));
            }
            appending
        }
    };
    Ok(node.split(appending))
}

/// Removes `key`, which must exist below `child`.
fn remove(
    child: &mut Child,
    src: &dyn PageSource,
    key: &[u8],
    freed: &mut Vec<(u64, u64)>,
) -> Result<()> {
    match make_dirty(child, src, freed)? {
        DirtyNode::Leaf(entries) => {
            let i = entries
                .binary_search_by(|(k, _)| k.as_slice().cmp(key))
                .expect("delete of a key that get found");
            let (k, v) = entries.remove(i);
            free_val(&k, &v, freed);
        }
        DirtyNode::Branch { seps, children, .. } => {
            let i = seps.partition_point(|s| s.as_slice() <= key);
            remove(&mut children[i], src, key, freed)?;
            fix_child(seps, children, i, src, freed)?;
        }
    }
    Ok(())
}

fn child_bytes(child: &Child, src: &dyn PageSource) -> Result<usize> {
    Ok(match child {
        Child::Clean(id) => src.page(*id)?.payload_bytes(),
        Child::Dirty(n) => n.encoded_bytes(),
    })
}

/// After a delete below child `i`: drops it if empty, or merges it with a sibling if it is
/// small and the two fit one page.
fn fix_child(
    seps: &mut Vec<Vec<u8>>,
    children: &mut Vec<Child>,
    i: usize,
    src: &dyn PageSource,
    freed: &mut Vec<(u64, u64)>,
) -> Result<()> {
    let Child::Dirty(node) = &children[i] else {
        unreachable!("a deleted-from child is dirty")
    };
    let (empty, bytes, is_leaf) = (
        node.is_empty(),
        node.encoded_bytes(),
        matches!(**node, DirtyNode::Leaf(_)),
    );
    if empty {
        children.remove(i);
        if !seps.is_empty() {
            seps.remove(i.saturating_sub(1));
        }
        return Ok(());
    }
    if bytes >= MERGE_BELOW_BYTES || children.len() < 2 {
        return Ok(());
    }
    let sibling = if i + 1 < children.len() { i + 1 } else { i - 1 };
    let (left, right) = (i.min(sibling), i.max(sibling));
    // Merged branches keep both first children; the separator between them comes down.
    let sep_cost = if is_leaf {
        0
    } else {
        BRANCH_ENTRY_FIXED + seps[left].len() - 8
    };
    if bytes + child_bytes(&children[sibling], src)? + sep_cost > PAYLOAD_BYTES {
        return Ok(());
    }
    make_dirty(&mut children[sibling], src, freed)?;
    let Child::Dirty(right_node) = children.remove(right) else {
        unreachable!()
    };
    let sep = seps.remove(left);
    let Child::Dirty(left_node) = &mut children[left] else {
        unreachable!()
    };
    match (&mut **left_node, *right_node) {
        (DirtyNode::Leaf(l), DirtyNode::Leaf(r)) => l.extend(r),
        (
            DirtyNode::Branch {
                seps: ls,
                children: lc,
                ..
            },
            DirtyNode::Branch {
                seps: rs,
                children: rc,
                ..
            },
        ) => {
            ls.push(sep);
            ls.extend(rs);
            lc.extend(rc);
        }
        _ => unreachable!("siblings are at the same level"),
    }
    Ok(())
}

/// Writes every dirty node below and including `child`, children first, and turns it clean.
/// `write_overflow(key, value)` writes an extent and returns its first page id;
/// `write_node(node, child_ids)` writes a page and returns its id.
pub fn flush(child: &mut Child, w: &mut dyn NodeWriter) -> Result<u64> {
    let id = match child {
        Child::Clean(id) => return Ok(*id),
        Child::Dirty(node) => match &mut **node {
            DirtyNode::Leaf(entries) => {
                assert!(!entries.is_empty(), "an empty leaf is never written");
                for (k, v) in entries.iter_mut() {
                    if let Val::Pending(bytes) = v {
                        let len = bytes.len() as u32;
                        let id = w.write_overflow(k, &bytes[..])?;
                        *v = Val::Overflow { id, len };
                    }
                }
                w.write_leaf(entries)?
            }
            DirtyNode::Branch {
                level,
                seps,
                children,
            } => {
                assert!(!children.is_empty());
                let ids = children
                    .iter_mut()
                    .map(|c| flush(c, w))
                    .collect::<Result<Vec<_>>>()?;
                w.write_branch(*level, seps, &ids)?
            }
        },
    };
    *child = Child::Clean(id);
    Ok(id)
}

/// Where `flush` puts pages: the commit's segment writer.
pub trait NodeWriter {
    fn write_overflow(&mut self, key: &[u8], value: &[u8]) -> Result<u64>;
    fn write_leaf(&mut self, entries: &[(Vec<u8>, Val)]) -> Result<u64>;
    fn write_branch(&mut self, level: u8, seps: &[Vec<u8>], children: &[u64]) -> Result<u64>;
}
