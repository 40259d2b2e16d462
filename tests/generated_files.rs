//! Generated files are committed; this fails when they are not what the code generates now.
//! Fix with `make generate`.

use std::path::Path;

#[test]
fn crds_directory_is_what_weft_crds_writes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let expected = weft::api::crd_files().unwrap();
    for (name, contents) in &expected {
        let path = dir.join(name);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make generate`", path.display()));
        assert!(
            committed == *contents,
            "{} is stale; run `make generate`",
            path.display()
        );
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut names: Vec<String> = expected.into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(
        on_disk, names,
        "crds/ holds files weft does not generate; run `make generate`"
    );
}
