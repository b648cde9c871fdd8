// The skyhost SDK for Go services (docs/languages.md). Self-contained: a
// build needs no module download.
module skyhost

go 1.27
