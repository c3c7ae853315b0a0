//! Spilled captures share one file. Alone in its test binary so that the
//! count of open file descriptors is not disturbed by other tests.

use jobmill::exec::{Capture, SpillBudget};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn thousands_of_spilled_captures_use_one_file_descriptor() {
    let before = open_fds();
    let budget = SpillBudget::new(4096);
    let mut captures: Vec<Capture> = (0..5000).map(|_| Capture::new(budget.clone())).collect();
    for round in 0..3u32 {
        for (i, c) in captures.iter_mut().enumerate() {
            c.append(format!("capture {i} round {round}\n").as_bytes());
        }
    }
    let spilled = captures.iter().filter(|c| c.is_spilled()).count();
    assert!(spilled > 4000, "only {spilled} captures spilled");
    assert!(budget.in_memory() <= 4096);
    assert!(
        open_fds() <= before + 1,
        "{} descriptors open, {before} before",
        open_fds()
    );
    for (i, c) in captures.iter_mut().enumerate() {
        let expected: String = (0..3).map(|r| format!("capture {i} round {r}\n")).collect();
        assert_eq!(c.to_vec().unwrap(), expected.as_bytes(), "capture {i}");
    }
    drop(captures);
    assert_eq!(budget.in_memory(), 0);
}
