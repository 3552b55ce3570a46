package main

import "testing"

// Sign-in returns only to paths on this site: nothing a browser would read
// as another host, however it is spelled.
func TestLocalPath(t *testing.T) {
	for p, want := range map[string]string{
		"/": "/", "/connections": "/connections", "/connections/c1?tab=history": "/connections/c1?tab=history",
		"/a/./b": "/a/b", "/.//evil.example": "/evil.example", "/x/..//evil.example": "/evil.example",
	} {
		if got := localPath(p); got != want {
			t.Errorf("localPath(%q) = %q, want %q", p, got, want)
		}
	}
	for _, p := range []string{
		"", "connections", "//evil.example", "///evil.example", "/\\evil.example", "/./\\evil.example",
		"/\t/evil.example", "/%5Cevil.example",
		"https://evil.example/", "javascript:alert(1)", "/\x00", "/a\nb",
	} {
		if got := localPath(p); got != "" {
			t.Errorf("localPath(%q) = %q, want it refused", p, got)
		}
	}
}
