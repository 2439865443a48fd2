//! A simple wait-free, grow-only pagetable, assumes a dense keyspace.
#![allow(unsafe_code)]

use std::{
    alloc::{alloc_zeroed, Layout},
    convert::TryFrom,
    mem::{align_of, size_of},
    sync::atomic::Ordering::{Acquire, Relaxed, Release},
};

use crossbeam_epoch::{pin, Atomic, Guard, Owned, Shared};

use crate::{
    debug_delay,
    pagecache::{constants::MAX_PID_BITS, Page, PageView},
    Measure, M,
};

#[allow(unused)]
#[doc(hidden)]
pub const PAGETABLE_NODE_SZ: usize = size_of::<Node1>();

// MARGAY PATCH: four levels of 2^10, 2^9, 2^9 and 2^9 children (an 8 KiB
// root and 4 KiB nodes) instead of upstream's two of 2^19 and 2^18 (a
// 4 MiB root and 2 MiB leaves). Same 37-bit page id space, two more
// pointer hops per lookup. Upstream's nodes are above malloc's mmap
// threshold: every open mmapped 6 MiB and every close munmapped it again
// (with a TLB shootdown on each CPU the process's threads ran on), for a
// store of a few dozen pages; nodes of 64 KiB or so came from the heap but
// were `calloc`ed over recycled memory, i.e. memset, page faults included.
// Small nodes cost one page each at most, and a small store has one per
// level.
const NODE1_FAN_FACTOR: usize = MAX_PID_BITS - 3 * LOWER_FAN_FACTOR;
const LOWER_FAN_FACTOR: usize = 9;
const NODE1_FAN_OUT: usize = 1 << NODE1_FAN_FACTOR;
const LOWER_FAN_OUT: usize = 1 << LOWER_FAN_FACTOR;
const LOWER_MASK: u64 = (LOWER_FAN_OUT - 1) as u64;

pub type PageId = u64;

type Node1 = Node<Node2, NODE1_FAN_OUT>;
type Node2 = Node<Node3, LOWER_FAN_OUT>;
type Node3 = Node<Node4, LOWER_FAN_OUT>;
type Node4 = Node<Page, LOWER_FAN_OUT>;

struct Node<T, const N: usize> {
    children: [Atomic<T>; N],
}

impl<T, const N: usize> Node<T, N> {
    fn new() -> Owned<Self> {
        let size = size_of::<Self>();
        let align = align_of::<Self>();

        unsafe {
            let layout = Layout::from_size_align_unchecked(size, align);

            #[allow(clippy::cast_ptr_alignment)]
            let ptr = alloc_zeroed(layout) as *mut Self;

            Owned::from_raw(ptr)
        }
    }
}

impl<T, const N: usize> Drop for Node<T, N> {
    fn drop(&mut self) {
        drop_iter(self.children.iter());
    }
}

fn drop_iter<T>(iter: core::slice::Iter<'_, Atomic<T>>) {
    let guard = pin();
    for child in iter {
        let shared_child = child.load(Relaxed, &guard);
        if shared_child.is_null() {
            // this does not leak because the PageTable is
            // assumed to be dense.
            break;
        }
        unsafe {
            drop(shared_child.into_owned());
        }
    }
}

/// A simple lock-free radix tree.
pub struct PageTable {
    head: Atomic<Node1>,
}

impl Default for PageTable {
    fn default() -> Self {
        let head = Node1::new();
        Self { head: Atomic::from(head) }
    }
}

impl PageTable {
    /// # Panics
    ///
    /// will panic if the item is not null already,
    /// which represents a serious failure to
    /// properly handle lifecycles of pages in the
    /// using system.
    pub(crate) fn insert<'g>(
        &self,
        pid: PageId,
        item: Page,
        guard: &'g Guard,
    ) -> PageView<'g> {
        debug_delay();
        let tip = self.traverse(pid, guard);

        let shared = Owned::new(item).into_shared(guard);
        let old = tip.swap(shared, Release, guard);
        assert!(old.is_null());

        PageView { read: shared, entry: tip }
    }

    /// Try to get a value from the tree.
    pub(crate) fn get<'g>(
        &self,
        pid: PageId,
        guard: &'g Guard,
    ) -> Option<PageView<'g>> {
        let _measure = Measure::new(&M.get_pagetable);
        debug_delay();
        let tip = self.traverse(pid, guard);

        debug_delay();
        let res = tip.load(Acquire, guard);
        if res.is_null() {
            None
        } else {
            let page_view = PageView { read: res, entry: tip };

            Some(page_view)
        }
    }

    fn traverse<'g>(&self, k: PageId, guard: &'g Guard) -> &'g Atomic<Page> {
        let (l1k, l2k, l3k, l4k) = split_fanout(k);

        debug_delay();
        let head = self.head.load(Acquire, guard);

        debug_delay();
        let l1 = unsafe { &head.deref().children };

        let l2 = unsafe { &child_or_insert(&l1[l1k], guard).deref().children };
        let l3 = unsafe { &child_or_insert(&l2[l2k], guard).deref().children };
        let l4 = unsafe { &child_or_insert(&l3[l3k], guard).deref().children };

        &l4[l4k]
    }
}

/// MARGAY PATCH: upstream's installation of a missing node, inline in
/// `traverse` for its one inner level, shared by the three.
fn child_or_insert<'g, T, const N: usize>(
    slot: &Atomic<Node<T, N>>,
    guard: &'g Guard,
) -> Shared<'g, Node<T, N>> {
    debug_delay();
    let ptr = slot.load(Acquire, guard);
    if !ptr.is_null() {
        return ptr;
    }

    debug_delay();
    match slot.compare_and_set(Shared::null(), Node::new(), Release, guard) {
        Ok(next_child) => next_child,
        Err(returned) => {
            drop(returned.new);
            returned.current
        }
    }
}

#[inline]
fn split_fanout(id: PageId) -> (usize, usize, usize, usize) {
    // right shift 32 on 32-bit pointer systems panics
    #[cfg(target_pointer_width = "64")]
    assert!(
        id <= 1 << MAX_PID_BITS,
        "trying to access key of {}, which is \
         higher than 2 ^ {}",
        id,
        MAX_PID_BITS,
    );

    let level = |n: usize| {
        safe_usize((id >> (n * LOWER_FAN_FACTOR)) & LOWER_MASK)
    };

    (safe_usize(id >> (3 * LOWER_FAN_FACTOR)), level(2), level(1), level(0))
}

#[inline]
fn safe_usize(value: PageId) -> usize {
    usize::try_from(value).unwrap()
}

impl Drop for PageTable {
    fn drop(&mut self) {
        let guard = pin();
        let head = self.head.load(Relaxed, &guard);
        unsafe {
            drop(head.into_owned());
        }
    }
}

#[test]
fn test_split_fanout() {
    assert_eq!(split_fanout(0b1_1111_1111), (0, 0, 0, 0b1_1111_1111));
    assert_eq!(split_fanout(0b10_0000_0001), (0, 0, 1, 1));
    assert_eq!(
        split_fanout((0b101 << 27) | (0b100 << 18) | (0b11 << 9) | 0b111),
        (0b101, 0b100, 0b11, 0b111)
    );
    assert_eq!(split_fanout(1 << 36), (1 << 9, 0, 0, 0));
}
