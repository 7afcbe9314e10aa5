module kosmos-e2e.local/pause

go 1.24
