//! The plugin's SUBSCRIBE rule (src/broker/plugin/mqttkit_bind.c) case by
//! case: the plugin source compiled into a small C program with stand-ins
//! for the few mosquitto and libcrypto calls it makes, fed the options
//! `broker up` renders and ACL-check events as mosquitto 2.0 sends them.
//! tests/mqtt5.rs proves the same rule through a real mosquitto; this covers
//! the edges (wildcards on both sides, `$share`, `a/#` against `a`, user
//! names that are no single level) without a broker per case.

use std::path::Path;
use std::process::Command;

/// What each case expects: granted (the plugin defers to the ACL file) or
/// refused, for `user` (a server identity or not) subscribing to `filter`.
const HARNESS: &str = r##"
#include <stdio.h>
#include "PLUGIN_SRC"

static const char *current_user;
const char *mosquitto_client_username(const struct mosquitto *c) { (void)c; return current_user; }
const char *mosquitto_client_id(const struct mosquitto *c) { (void)c; return "id"; }
void *mosquitto_client_certificate(const struct mosquitto *c) { (void)c; return 0; }
int mosquitto_set_username(struct mosquitto *c, const char *u) { (void)c; (void)u; return 0; }
static int registered_acl;
int mosquitto_callback_register(mosquitto_plugin_id_t *id, int event, mosq_callback cb,
				const void *d, void *u)
{ (void)id; (void)cb; (void)d; (void)u; registered_acl |= event == MOSQ_EVT_ACL_CHECK; return 0; }
int mosquitto_callback_unregister(mosquitto_plugin_id_t *id, int event, mosq_callback cb, const void *d)
{ (void)id; (void)event; (void)cb; (void)d; return 0; }
void mosquitto_log_printf(int level, const char *fmt, ...) { (void)level; (void)fmt; }
X509_NAME *X509_get_subject_name(const X509 *x) { (void)x; return 0; }
int X509_NAME_get_index_by_NID(const X509_NAME *n, int nid, int last) { (void)n; (void)nid; (void)last; return -1; }
X509_NAME_ENTRY *X509_NAME_get_entry(const X509_NAME *n, int loc) { (void)n; (void)loc; return 0; }
ASN1_STRING *X509_NAME_ENTRY_get_data(const X509_NAME_ENTRY *e) { (void)e; return 0; }
const unsigned char *ASN1_STRING_get0_data(const ASN1_STRING *x) { (void)x; return 0; }
int ASN1_STRING_length(const ASN1_STRING *x) { (void)x; return 0; }
void X509_free(X509 *x) { (void)x; }

static int check(const char *user, int access, const char *topic)
{
	struct mosquitto_evt_acl_check ed = {0};
	current_user = user;
	ed.access = access;
	ed.topic = topic;
	return on_acl_check(MOSQ_EVT_ACL_CHECK, &ed, 0);
}

int main(void)
{
	struct mosquitto_opt opts[] = {
		{"identity", "cert"},
		{"servers", "server,ops"},
		{"device_read", "devices/%u/commands"},
		{"device_read", "fleet/%u/#"},
		{"server_read", "devices/+/telemetry"},
		{"server_read", "devices/+/replies"},
	};
	if (mosquitto_plugin_init(0, 0, opts, 6) != 0 || !registered_acl) {
		printf("init failed or no ACL callback\n");
		return 1;
	}
	struct { const char *user, *filter; int granted; } cases[] = {
		{"device-001", "devices/device-001/commands", 1},
		{"device-001", "devices/device-002/commands", 0},
		{"device-001", "devices/+/commands", 1},
		{"device-001", "devices/#", 1},
		{"device-001", "#", 1},
		{"device-001", "devices/device-001/telemetry", 0},
		{"device-001", "devices/device-001", 0},
		{"device-001", "devices/device-001/commands/x", 0},
		{"device-001", "devices/+/replies", 0},
		{"device-001", "fleet/device-001", 1},
		{"device-001", "fleet/device-001/a/b", 1},
		{"device-001", "fleet/device-002/a", 0},
		{"device-001", "$share/g/devices/device-001/commands", 1},
		{"device-001", "$share/g/devices/device-002/commands", 0},
		{"device-001", "$SYS/#", 0},
		{"a/b", "devices/a/b/commands", 0},
		{"", "devices//commands", 0},
		{"server", "devices/+/telemetry", 1},
		{"server", "devices/x/telemetry", 1},
		{"server", "$share/sinks/devices/+/telemetry", 1},
		{"server", "devices/x/telemetry/y", 0},
		{"ops", "devices/+/replies", 1},
		{"server", "other/#", 0},
		{"server", "devices/server/commands", 1},
		{"serverX", "devices/+/telemetry", 0},
		{0, "devices/+/telemetry", 0},
	};
	int bad = 0;
	for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int rc = check(cases[i].user, MOSQ_ACL_SUBSCRIBE, cases[i].filter);
		int granted = rc == MOSQ_ERR_PLUGIN_DEFER;
		if (!granted && rc != MOSQ_ERR_ACL_DENIED) {
			printf("%s %s: unexpected rc %d\n", cases[i].user, cases[i].filter, rc);
			bad = 1;
		} else if (granted != cases[i].granted) {
			printf("%s %s: %s, want %s\n", cases[i].user ? cases[i].user : "(none)",
			       cases[i].filter, granted ? "granted" : "refused",
			       cases[i].granted ? "granted" : "refused");
			bad = 1;
		}
	}
	/* Publishes and deliveries are the ACL file's to decide. */
	if (check("device-001", 0x02, "anything") != MOSQ_ERR_PLUGIN_DEFER ||
	    check("device-001", 0x01, "devices/device-002/commands") != MOSQ_ERR_PLUGIN_DEFER) {
		printf("a read or write check was not deferred\n");
		bad = 1;
	}
	return bad;
}
"##;

#[test]
fn subscribe_rule_case_by_case() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/broker/plugin/mqttkit_bind.c");
    let harness = dir.path().join("harness.c");
    std::fs::write(
        &harness,
        HARNESS.replace("PLUGIN_SRC", &src.display().to_string()),
    )
    .unwrap();
    let exe = dir.path().join("harness");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&harness)
        .output()
        .unwrap_or_else(|e| panic!("{cc}: {e} (the build already needs a C compiler)"));
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let ran = Command::new(&exe).output().unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stdout)
    );
}
