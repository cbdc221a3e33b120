package engine

import "testing"

// DiffSettings names each changed setting by its YAML path and hides what may be a secret:
// passwords, tokens, and webhooks, whose URLs and headers often carry one.
func TestDiffSettingsHidesSecrets(t *testing.T) {
	type hook struct {
		URL     string            `yaml:"url"`
		Headers map[string]string `yaml:"headers"`
	}
	type file struct {
		API struct {
			Listen string `yaml:"listen"`
			Token  string `yaml:"token"`
		} `yaml:"api"`
		Server struct {
			Password string `yaml:"password"`
		} `yaml:"server"`
		Webhooks []hook `yaml:"webhooks"`
		Size     int    `yaml:"size"`
	}
	var a, b file
	a.API.Listen, a.API.Token, a.Server.Password, a.Size = "127.0.0.1:8080", "t1", "p1", 20
	a.Webhooks = []hook{{URL: "https://hooks.example/T0/secret-1", Headers: map[string]string{"Authorization": "Bearer s1"}}}
	b = a
	b.API.Token, b.Server.Password, b.Size = "t2", "p2", 30
	b.Webhooks = []hook{{URL: "https://hooks.example/T0/secret-2", Headers: map[string]string{"Authorization": "Bearer s2"}}}
	changes, err := DiffSettings("", a, b)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{"api.token": {"(hidden)", "(hidden)"}, "server.password": {"(hidden)", "(hidden)"},
		"webhooks": {"(hidden)", "(hidden)"}, "size": {"20", "30"}}
	if len(changes) != len(want) {
		t.Fatalf("changes %v", changes)
	}
	for _, c := range changes {
		if w, ok := want[c.Key]; !ok || c.Old != w[0] || c.New != w[1] {
			t.Errorf("%+v, want %v", c, w)
		}
	}
}
