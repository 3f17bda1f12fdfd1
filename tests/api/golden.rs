//! Golden files: tests/golden/input/X.html prepared with the default plan must equal
//! tests/golden/expected/X.html byte for byte. `UPDATE_GOLDEN=1` rewrites the expectations
//! (review the diff before committing).

use crate::helpers::{default_plan, root};
use pegabridge::template::rewrite;

#[test]
fn every_golden_input_prepares_to_its_expected_file_and_is_then_stable() {
    let plan = default_plan();
    let dir = root().join("tests/golden");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir.join("input")).unwrap() {
        let path = entry.unwrap().path();
        let expected_path = dir.join("expected").join(path.file_name().unwrap());
        let output = rewrite(&std::fs::read(&path).unwrap(), &plan)
            .unwrap()
            .output;
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&expected_path, &output).unwrap();
        }
        let expected = std::fs::read(&expected_path).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output),
            String::from_utf8_lossy(&expected),
            "{}",
            path.display()
        );
        assert_eq!(output, expected, "{}", path.display());
        let again = rewrite(&output, &plan).unwrap();
        assert_eq!(again.output, output, "{} is not stable", path.display());
        seen += 1;
    }
    assert!(seen >= 10);
}
