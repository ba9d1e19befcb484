//! Which pods a term follows: every pod (the leader), or a member's share of them, the pods
//! whose UID a [`View`] of the live member slots hashes to the member's slot.

/// Which pods a term follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Ownership {
    /// Every pod (the leader).
    All,
    /// The pods this member owns both in the view it released for and in the view it adopted
    /// (they differ while a hand-over is under way); none before the first adoption.
    Member {
        /// This member's slot.
        slot: u32,
        /// The view this member stopped following others' pods for (published).
        released: Option<View>,
        /// The view whose pods this member took over (after every member released for it).
        adopted: Option<View>,
    },
}

impl Ownership {
    /// Whether the pod with `uid` may be followed.
    pub(crate) fn may_follow(&self, uid: &str) -> bool {
        match self {
            Ownership::All => true,
            Ownership::Member {
                slot,
                released: Some(r),
                adopted: Some(a),
            } => r.owner(uid) == Some(*slot) && a.owner(uid) == Some(*slot),
            Ownership::Member { .. } => false,
        }
    }
}

/// A set of live member slots, and which of them owns a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct View(Vec<u32>);

impl View {
    /// The view of `slots` (any order, duplicates ignored).
    pub(crate) fn new(mut slots: Vec<u32>) -> Self {
        slots.sort_unstable();
        slots.dedup();
        View(slots)
    }

    /// The slots, ascending.
    pub(crate) fn slots(&self) -> &[u32] {
        &self.0
    }

    /// The slot owning the pod with `uid` (rendezvous hashing: the highest score wins), `None`
    /// for an empty view.
    pub(crate) fn owner(&self, uid: &str) -> Option<u32> {
        let h = fnv64(uid.as_bytes());
        self.0
            .iter()
            .copied()
            .max_by_key(|slot| (mix(h ^ mix(u64::from(*slot) + 1)), std::cmp::Reverse(*slot)))
    }

    /// As published in status ConfigMaps: `0,1,3`.
    pub(crate) fn encode(&self) -> String {
        self.0
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// FNV-1a, 64 bits: stable across processes and versions.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser: spreads similar inputs apart.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_spread_and_move_little() {
        let uids: Vec<String> = (0..3000).map(|i| format!("pod-uid-{i}")).collect();
        let three = View::new(vec![2, 0, 1]);
        assert_eq!(three.slots(), &[0, 1, 2]);
        assert_eq!(three.encode(), "0,1,2");
        let mut count = [0usize; 4];
        for u in &uids {
            count[three.owner(u).unwrap() as usize] += 1;
        }
        for c in &count[..3] {
            assert!((800..1200).contains(c), "balanced: {count:?}");
        }
        // A fourth member takes about a quarter, only from the others.
        let four = View::new(vec![0, 1, 2, 3]);
        let moved: Vec<&String> = uids
            .iter()
            .filter(|u| three.owner(u) != four.owner(u))
            .collect();
        assert!((600..900).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|u| four.owner(u) == Some(3)));
        // One member gone: only its pods move.
        let two = View::new(vec![0, 2]);
        assert!(
            uids.iter()
                .filter(|u| three.owner(u) != two.owner(u))
                .all(|u| three.owner(u) == Some(1))
        );
        assert_eq!(View::new(vec![]).owner("x"), None);
    }
}
