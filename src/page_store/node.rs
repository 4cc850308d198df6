//! B+tree nodes in their two forms: `Page`, a verified read-only page as it sits in the cache,
//! and `DirtyNode`, a node a write transaction has copied out to change, with their encodings.

use std::sync::Arc;

use super::format::{
    open_page, seal_page, u16_at, u32_at, u64_at, Header, Kind, BRANCH_ENTRY_FIXED, HEADER_BYTES,
    INLINE_ENTRY_MAX_BYTES, LEAF_ENTRY_FIXED, PAGE_BYTES, PAYLOAD_BYTES,
};

const VKIND_INLINE: u8 = 0;
const VKIND_OVERFLOW: u8 = 1;

/// A value as a leaf refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValRef<'a> {
    Inline(&'a [u8]),
    /// An overflow extent starting at page `id` holding a value of `len` bytes.
    Overflow {
        id: u64,
        len: u32,
    },
}

/// A verified leaf or branch page, decoded just enough to binary-search it in place.
#[derive(Debug)]
pub struct Page {
    pub header: Header,
    buf: Box<[u8]>,
    /// Leaf: offset of each entry. Branch: offset of each `(seplen, sep, child)` entry; the
    /// first child sits at `HEADER_BYTES`.
    offsets: Vec<u16>,
}

impl Page {
    /// Verifies and decodes the tree page read from `id`; Err is the failure detail.
    pub fn decode(buf: Box<[u8]>, id: u64) -> Result<Page, String> {
        let header = open_page(&buf, id)?;
        let end = HEADER_BYTES + header.payload_bytes as usize;
        let mut offsets = Vec::with_capacity(usize::from(header.count));
        let mut at = HEADER_BYTES;
        match header.kind {
            Kind::Leaf => {
                if header.level != 0 {
                    return Err(format!("leaf at level {}", header.level));
                }
                for _ in 0..header.count {
                    offsets.push(at as u16);
                    if at + LEAF_ENTRY_FIXED > end {
                        return Err("leaf entry runs past the payload".into());
                    }
                    let klen = usize::from(u16_at(&buf, at));
                    let vkind = buf[at + 2];
                    let vlen = u32_at(&buf, at + 3) as usize;
                    at += LEAF_ENTRY_FIXED
                        + klen
                        + match vkind {
                            VKIND_INLINE => vlen,
                            VKIND_OVERFLOW => 8,
                            _ => return Err(format!("unknown value kind {vkind}")),
                        };
                }
            }
            Kind::Branch => {
                if header.level == 0 || header.count == 0 {
                    return Err("branch at level 0 or without children".into());
                }
                at += 8;
                for _ in 1..header.count {
                    offsets.push(at as u16);
                    if at + BRANCH_ENTRY_FIXED > end {
                        return Err("branch entry runs past the payload".into());
                    }
                    at += BRANCH_ENTRY_FIXED + usize::from(u16_at(&buf, at));
                }
            }
            other => return Err(format!("expected a tree page, found {other:?}")),
        }
        if at != end {
            return Err(format!("entries end at {at}, payload at {end}"));
        }
        let page = Page {
            header,
            buf,
            offsets,
        };
        #[cfg(debug_assertions)]
        page.debug_check_order()?;
        Ok(page)
    }

    /// Keys (or separators) strictly ascending: O(entries), so only in debug builds; release
    /// builds rely on `check_integrity` for it.
    #[cfg(debug_assertions)]
    fn debug_check_order(&self) -> Result<(), String> {
        let n = if self.is_leaf() {
            self.len()
        } else {
            self.seps()
        };
        let at = |i| {
            if self.is_leaf() {
                self.key(i)
            } else {
                self.sep(i)
            }
        };
        match (1..n).find(|&i| at(i - 1) >= at(i)) {
            Some(i) => Err(format!("keys {} and {i} out of order", i - 1)),
            None => Ok(()),
        }
    }

    pub fn id(&self) -> u64 {
        self.header.id
    }

    pub fn is_leaf(&self) -> bool {
        self.header.kind == Kind::Leaf
    }

    pub fn level(&self) -> u8 {
        self.header.level
    }

    /// The page as written to disk (header, payload, zero tail).
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes this page holds in the cache.
    pub fn mem_bytes(&self) -> usize {
        PAGE_BYTES + self.offsets.len() * 2 + 64
    }

    pub fn payload_bytes(&self) -> usize {
        self.header.payload_bytes as usize
    }

    // ---- leaves ----

    pub fn len(&self) -> usize {
        if self.is_leaf() {
            self.offsets.len()
        } else {
            self.offsets.len() + 1
        }
    }

    pub fn key(&self, i: usize) -> &[u8] {
        debug_assert!(self.is_leaf());
        let at = usize::from(self.offsets[i]);
        let klen = usize::from(u16_at(&self.buf, at));
        &self.buf[at + LEAF_ENTRY_FIXED..at + LEAF_ENTRY_FIXED + klen]
    }

    pub fn value(&self, i: usize) -> ValRef<'_> {
        debug_assert!(self.is_leaf());
        let at = usize::from(self.offsets[i]);
        let klen = usize::from(u16_at(&self.buf, at));
        let vlen = u32_at(&self.buf, at + 3);
        let v = at + LEAF_ENTRY_FIXED + klen;
        if self.buf[at + 2] == VKIND_INLINE {
            ValRef::Inline(&self.buf[v..v + vlen as usize])
        } else {
            ValRef::Overflow {
                id: u64_at(&self.buf, v),
                len: vlen,
            }
        }
    }

    /// `Ok(i)`: entry `i` has `key`; `Err(i)`: `key` would be inserted at `i`.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.offsets.len());
        while lo < hi {
            let mid = usize::midpoint(lo, hi);
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    // ---- branches ----

    /// Separator `i` lies between child `i` and child `i + 1`.
    pub fn sep(&self, i: usize) -> &[u8] {
        debug_assert!(!self.is_leaf());
        let at = usize::from(self.offsets[i]);
        let slen = usize::from(u16_at(&self.buf, at));
        &self.buf[at + 2..at + 2 + slen]
    }

    pub fn seps(&self) -> usize {
        self.offsets.len()
    }

    pub fn child(&self, i: usize) -> u64 {
        debug_assert!(!self.is_leaf());
        if i == 0 {
            u64_at(&self.buf, HEADER_BYTES)
        } else {
            let at = usize::from(self.offsets[i - 1]);
            let slen = usize::from(u16_at(&self.buf, at));
            u64_at(&self.buf, at + 2 + slen)
        }
    }

    /// The child whose range holds `key`: the number of separators `<= key`.
    pub fn child_index(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.offsets.len());
        while lo < hi {
            let mid = usize::midpoint(lo, hi);
            if self.sep(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// A value in a dirty leaf.
#[derive(Debug, Clone)]
pub enum Val {
    Inline(Vec<u8>),
    Overflow {
        id: u64,
        len: u32,
    },
    /// Too long to inline and not yet written: becomes an overflow extent at commit.
    Pending(Arc<Vec<u8>>),
}

impl Val {
    pub fn new(key: &[u8], value: &[u8]) -> Val {
        if LEAF_ENTRY_FIXED + key.len() + value.len() <= INLINE_ENTRY_MAX_BYTES {
            Val::Inline(value.to_vec())
        } else {
            Val::Pending(Arc::new(value.to_vec()))
        }
    }

    fn from_ref(v: ValRef<'_>) -> Val {
        match v {
            ValRef::Inline(b) => Val::Inline(b.to_vec()),
            ValRef::Overflow { id, len } => Val::Overflow { id, len },
        }
    }

    fn encoded_bytes(&self) -> usize {
        match self {
            Val::Inline(v) => v.len(),
            Val::Overflow { .. } | Val::Pending(_) => 8,
        }
    }
}

/// A reference from a parent (or the root slot) to a child.
#[derive(Debug)]
pub enum Child {
    Clean(u64),
    Dirty(Box<DirtyNode>),
}

#[derive(Debug)]
pub enum DirtyNode {
    Leaf(Vec<(Vec<u8>, Val)>),
    Branch {
        level: u8,
        seps: Vec<Vec<u8>>,
        children: Vec<Child>,
    },
}

impl DirtyNode {
    /// Copies a clean page out for modification.
    pub fn from_page(page: &Page) -> DirtyNode {
        if page.is_leaf() {
            DirtyNode::Leaf(
                (0..page.len())
                    .map(|i| (page.key(i).to_vec(), Val::from_ref(page.value(i))))
                    .collect(),
            )
        } else {
            DirtyNode::Branch {
                level: page.level(),
                seps: (0..page.seps()).map(|i| page.sep(i).to_vec()).collect(),
                children: (0..page.len())
                    .map(|i| Child::Clean(page.child(i)))
                    .collect(),
            }
        }
    }

    /// Payload bytes this node would encode to.
    pub fn encoded_bytes(&self) -> usize {
        match self {
            DirtyNode::Leaf(entries) => entries.iter().map(|(k, v)| leaf_entry_bytes(k, v)).sum(),
            DirtyNode::Branch { seps, .. } => {
                8 + seps
                    .iter()
                    .map(|s| BRANCH_ENTRY_FIXED + s.len())
                    .sum::<usize>()
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            DirtyNode::Leaf(entries) => entries.is_empty(),
            DirtyNode::Branch { children, .. } => children.is_empty(),
        }
    }

    /// Splits an over-full node into pieces that each fit a page. Returns the pieces after the
    /// first, each with the separator that precedes it; `self` keeps the first piece.
    ///
    /// `appending` (the growth came at the node's last entry, as ascending MVCC revisions do)
    /// fills the left pieces to the brim and leaves the rest for the appends to come, so an
    /// append-only key space packs pages nearly full; otherwise pieces are balanced.
    pub fn split(&mut self, appending: bool) -> Vec<(Vec<u8>, DirtyNode)> {
        let total = self.encoded_bytes();
        if total <= PAYLOAD_BYTES {
            return Vec::new();
        }
        let pieces = total.div_ceil(PAYLOAD_BYTES);
        let target = if appending {
            PAYLOAD_BYTES
        } else {
            total.div_ceil(pieces)
        };
        match self {
            DirtyNode::Leaf(entries) => {
                let sizes: Vec<usize> = entries
                    .iter()
                    .map(|(k, v)| leaf_entry_bytes(k, v))
                    .collect();
                let cuts = cut_points(&sizes, 0, target);
                let mut out = Vec::new();
                for &cut in cuts.iter().rev() {
                    let right = entries.split_off(cut);
                    let sep = shortest_separator(&entries.last().unwrap().0, &right[0].0);
                    out.push((sep, DirtyNode::Leaf(right)));
                }
                out.reverse();
                out
            }
            DirtyNode::Branch {
                level,
                seps,
                children,
            } => {
                // Item i is child i with the separator before it; a piece's first child costs 8.
                let sizes: Vec<usize> = std::iter::once(8)
                    .chain(seps.iter().map(|s| BRANCH_ENTRY_FIXED + s.len()))
                    .collect();
                let cuts = cut_points(&sizes, 8, target);
                let mut out = Vec::new();
                for &cut in cuts.iter().rev() {
                    let right_children = children.split_off(cut);
                    let mut right_seps = seps.split_off(cut - 1);
                    let promoted = right_seps.remove(0);
                    out.push((
                        promoted,
                        DirtyNode::Branch {
                            level: *level,
                            seps: right_seps,
                            children: right_children,
                        },
                    ));
                }
                out.reverse();
                out
            }
        }
    }
}

/// Indices where a new piece starts so that each piece's bytes stay within a page and near
/// `target`. `first_cost` replaces the size of an item that starts a piece (branches: a
/// piece's first child has no separator), or 0 to keep item sizes.
fn cut_points(sizes: &[usize], first_cost: usize, target: usize) -> Vec<usize> {
    let cost_first = |s: usize| if first_cost == 0 { s } else { first_cost };
    let mut cuts = Vec::new();
    let mut cur = cost_first(sizes[0]);
    for (i, &s) in sizes.iter().enumerate().skip(1) {
        if cur + s > PAYLOAD_BYTES || cur >= target {
            cuts.push(i);
            cur = cost_first(s);
        } else {
            cur += s;
        }
    }
    assert!(cur <= PAYLOAD_BYTES);
    cuts
}

/// The shortest key `s` with `left < s <= right`, so that a parent stores short separators.
pub fn shortest_separator(left: &[u8], right: &[u8]) -> Vec<u8> {
    assert!(left < right);
    let common = left.iter().zip(right).take_while(|(a, b)| a == b).count();
    right[..=common].to_vec()
}

pub fn leaf_entry_bytes(key: &[u8], v: &Val) -> usize {
    LEAF_ENTRY_FIXED + key.len() + v.encoded_bytes()
}

/// Encodes a dirty leaf whose values are all inline or already-written overflow extents.
pub fn encode_leaf(entries: &[(Vec<u8>, Val)], id: u64, generation: u64) -> Vec<u8> {
    debug_assert!(
        entries.windows(2).all(|w| w[0].0 < w[1].0),
        "leaf keys ascending"
    );
    let bytes: usize = entries.iter().map(|(k, v)| leaf_entry_bytes(k, v)).sum();
    assert!(
        bytes <= PAYLOAD_BYTES,
        "a leaf of {bytes} bytes was not split"
    );
    let mut page = vec![0u8; PAGE_BYTES];
    let mut at = HEADER_BYTES;
    for (k, v) in entries {
        page[at..at + 2].copy_from_slice(&(k.len() as u16).to_le_bytes());
        let (vkind, vlen) = match v {
            Val::Inline(b) => (VKIND_INLINE, b.len() as u32),
            Val::Overflow { len, .. } => (VKIND_OVERFLOW, *len),
            Val::Pending(_) => unreachable!("pending values are written before their leaf"),
        };
        page[at + 2] = vkind;
        page[at + 3..at + 7].copy_from_slice(&vlen.to_le_bytes());
        at += LEAF_ENTRY_FIXED;
        page[at..at + k.len()].copy_from_slice(k);
        at += k.len();
        match v {
            Val::Inline(b) => {
                page[at..at + b.len()].copy_from_slice(b);
                at += b.len();
            }
            Val::Overflow { id, .. } => {
                page[at..at + 8].copy_from_slice(&id.to_le_bytes());
                at += 8;
            }
            Val::Pending(_) => unreachable!(),
        }
    }
    seal_page(
        &mut page,
        &Header {
            kind: Kind::Leaf,
            level: 0,
            count: entries.len() as u16,
            id,
            generation,
            payload_bytes: (at - HEADER_BYTES) as u32,
            extent: 1,
        },
    );
    page
}

pub fn encode_branch(level: u8, seps: &[Vec<u8>], children: &[u64], id: u64, gen: u64) -> Vec<u8> {
    assert_eq!(seps.len() + 1, children.len());
    debug_assert!(seps.windows(2).all(|w| w[0] < w[1]), "separators ascending");
    let bytes = 8 + seps
        .iter()
        .map(|s| BRANCH_ENTRY_FIXED + s.len())
        .sum::<usize>();
    assert!(
        bytes <= PAYLOAD_BYTES,
        "a branch of {bytes} bytes was not split"
    );
    let mut page = vec![0u8; PAGE_BYTES];
    let mut at = HEADER_BYTES;
    page[at..at + 8].copy_from_slice(&children[0].to_le_bytes());
    at += 8;
    for (s, c) in seps.iter().zip(&children[1..]) {
        page[at..at + 2].copy_from_slice(&(s.len() as u16).to_le_bytes());
        page[at + 2..at + 2 + s.len()].copy_from_slice(s);
        at += 2 + s.len();
        page[at..at + 8].copy_from_slice(&c.to_le_bytes());
        at += 8;
    }
    seal_page(
        &mut page,
        &Header {
            kind: Kind::Branch,
            level,
            count: children.len() as u16,
            id,
            generation: gen,
            payload_bytes: (at - HEADER_BYTES) as u32,
            extent: 1,
        },
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page_store::format::page_id;

    #[test]
    fn an_appending_split_packs_the_left_page_full() {
        let entries: Vec<_> = (0..100u32)
            .map(|i| (format!("key{i:05}").into_bytes(), Val::Inline(vec![1; 40])))
            .collect();
        let mut node = DirtyNode::Leaf(entries);
        let rest = node.split(true);
        assert_eq!(rest.len(), 1);
        assert!(node.encoded_bytes() > PAYLOAD_BYTES - 60);
    }

    #[test]
    fn leaf_and_branch_round_trip_through_a_page() {
        let entries = vec![
            (b"a".to_vec(), Val::Inline(b"1".to_vec())),
            (
                b"b".to_vec(),
                Val::Overflow {
                    id: page_id(2, 3),
                    len: 9000,
                },
            ),
        ];
        let id = page_id(1, 1);
        let page = Page::decode(encode_leaf(&entries, id, 4).into(), id).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page.key(1), b"b");
        assert_eq!(page.value(0), ValRef::Inline(b"1"));
        assert_eq!(page.search(b"ab"), Err(1));
        let seps = vec![b"m".to_vec(), b"t".to_vec()];
        let b = Page::decode(encode_branch(1, &seps, &[7, 8, 9], id, 4).into(), id).unwrap();
        assert_eq!((b.child(0), b.child(2), b.sep(1)), (7, 9, &b"t"[..]));
        assert_eq!(b.child_index(b"m"), 1);
        assert_eq!(b.child_index(b"a"), 0);
        assert_eq!(b.child_index(b"z"), 2);
    }

    #[test]
    fn an_overfull_leaf_splits_into_pages_with_short_separators() {
        let entries: Vec<_> = (0..400u32)
            .map(|i| (format!("key{i:05}").into_bytes(), Val::Inline(vec![1; 40])))
            .collect();
        let mut node = DirtyNode::Leaf(entries);
        let rest = node.split(false);
        assert!(rest.len() >= 4);
        assert!(node.encoded_bytes() <= PAYLOAD_BYTES);
        for (sep, piece) in &rest {
            assert!(piece.encoded_bytes() <= PAYLOAD_BYTES);
            let DirtyNode::Leaf(e) = piece else { panic!() };
            assert!(sep.as_slice() <= e[0].0.as_slice());
        }
    }
}
