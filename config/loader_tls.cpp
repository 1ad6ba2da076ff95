// The TLS policy keys of a [[service]] (issue: client mode and the full TLS policy).
// Values are checked for form here; OpenSSL-level checks (a cipher string that matches nothing,
// unreadable CA files) happen when the TLS contexts are built.

#include <optional>
#include <tuple>
#include <utility>

#include "config/loader_internal.h"

namespace ferry::detail {
namespace {

constexpr unsigned kMaxRecordPadding = 16384;

std::optional<int> parse_version(std::string_view text) {
  if (text == "1.2") return 0x0303;
  if (text == "1.3") return 0x0304;
  return std::nullopt;
}

}  // namespace

const std::vector<std::string>* Loader::strings_at(const toml::table& table, std::string_view name,
                                                   const std::string& key,
                                                   std::vector<std::string>& out) {
  const toml::node* node = table.get(name);
  if (!node) return nullptr;
  const toml::array* array = node->as_array();
  if (!array) {
    type_error(*node, key, "an array of strings");
    return nullptr;
  }
  out.clear();
  for (size_t i = 0; i < array->size(); ++i) {
    const toml::node& item = *array->get(i);
    if (const auto* text = item.as_string()) {
      if (text->get().empty()) {
        error(item.source(), key + "[" + std::to_string(i) + "]", "must not be empty");
      }
      out.push_back(text->get());
    } else {
      type_error(item, key + "[" + std::to_string(i) + "]", "a string");
    }
  }
  return &out;
}

void Loader::load_service_tls(const toml::table& table, const std::string& prefix,
                              ServiceConfig& service) {
  TlsPolicy& tls = service.tls;
  const bool client = service.mode == ServiceMode::client;
  auto pos = [&](std::string_view name) { return pos_of(table.get(name)->source()); };
  auto only_for = [&](std::string_view name, bool allowed, const char* mode) {
    if (table.contains(name) && !allowed) {
      error(table.get(name)->source(), prefix + std::string(name),
            std::string("only for mode = \"") + mode + "\"");
      return false;
    }
    return table.contains(name);
  };

  for (auto [name, out, where] :
       {std::tuple{"min_version", &tls.min_version, &tls.min_version_pos},
        std::tuple{"max_version", &tls.max_version, &tls.max_version_pos}}) {
    if (const std::string* text = string_at(table, name, prefix + name)) {
      *where = pos(name);
      if (auto v = parse_version(*text)) {
        *out = *v;
      } else {
        error(table.get(name)->source(), prefix + name,
              "bad TLS version " + in_quotes(*text) + " (use \"1.2\" or \"1.3\")");
      }
    }
  }
  if (tls.min_version && tls.max_version && tls.min_version > tls.max_version) {
    error(table.get("min_version")->source(), prefix + "min_version", "is above max_version");
  }

  for (auto [name, out, where] :
       {std::tuple{"ciphers", &tls.ciphers, &tls.ciphers_pos},
        std::tuple{"ciphersuites", &tls.ciphersuites, &tls.ciphersuites_pos},
        std::tuple{"groups", &tls.groups, &tls.groups_pos}}) {
    if (const std::string* text = string_at(table, name, prefix + name)) {
      *where = pos(name);
      if (text->empty()) error(table.get(name)->source(), prefix + name, "must not be empty");
      *out = *text;
    }
  }

  if (strings_at(table, "alpn", prefix + "alpn", tls.alpn)) {
    tls.alpn_pos = pos("alpn");
    for (size_t i = 0; i < tls.alpn.size(); ++i) {
      if (tls.alpn[i].size() > 255) {
        error(table.get("alpn")->source(), prefix + "alpn[" + std::to_string(i) + "]",
              "longer than 255 bytes");
      }
    }
  }

  // ---- server mode only ----
  if (only_for("certificates", !client, "server")) {
    const toml::node& node = *table.get("certificates");
    if (const toml::array* array = node.as_array()) {
      for (size_t i = 0; i < array->size(); ++i) {
        const std::string key = prefix + "certificates[" + std::to_string(i) + "]";
        const toml::table* entry = table_at(*array->get(i), key);
        if (!entry) continue;
        check_keys(*entry, key + ".", {"cert", "key"});
        CertificateConfig c;
        if (!entry->contains("cert")) error(entry->source(), key + ".cert", "missing required key");
        if (const std::string* cert = string_at(*entry, "cert", key + ".cert")) {
          c.cert_pos = pos_of(entry->get("cert")->source());
          if (cert->empty())
            error(entry->get("cert")->source(), key + ".cert", "must not be empty");
          c.cert_file = resolve_path(*cert);
        }
        c.key_file = c.cert_file;
        c.key_pos = c.cert_pos;
        if (const std::string* k = string_at(*entry, "key", key + ".key")) {
          c.key_pos = pos_of(entry->get("key")->source());
          if (k->empty()) error(entry->get("key")->source(), key + ".key", "must not be empty");
          c.key_file = resolve_path(*k);
        }
        tls.certificates.push_back(std::move(c));
      }
    } else {
      type_error(node, prefix + "certificates", "an array of tables ([[service.certificates]])");
    }
  }

  if (only_for("client_ca", !client, "server")) {
    if (const std::string* ca = string_at(table, "client_ca", prefix + "client_ca")) {
      tls.client_ca_pos = pos("client_ca");
      if (ca->empty())
        error(table.get("client_ca")->source(), prefix + "client_ca", "must not be empty");
      tls.client_ca = resolve_path(*ca);
      tls.verify_client = VerifyClient::required;
    }
  }
  if (only_for("verify_client", !client, "server")) {
    if (const std::string* v = string_at(table, "verify_client", prefix + "verify_client")) {
      tls.verify_client_pos = pos("verify_client");
      if (*v == "none") {
        tls.verify_client = VerifyClient::none;
      } else if (*v == "optional" || *v == "required") {
        tls.verify_client = *v == "optional" ? VerifyClient::optional : VerifyClient::required;
        if (tls.client_ca.empty()) {
          error(table.get("verify_client")->source(), prefix + "verify_client",
                "needs client_ca (the CA that signs client certificates)");
        }
      } else {
        error(table.get("verify_client")->source(), prefix + "verify_client",
              "bad value " + in_quotes(*v) + " (use none, optional or required)");
      }
    }
  }
  const bool verifies_clients = !tls.client_ca.empty() && tls.verify_client != VerifyClient::none;
  for (auto [name, where] :
       {std::pair{"crl", &tls.crl_pos}, std::pair{"allow_subjects", &tls.allow_subjects_pos},
        std::pair{"allow_sans", &tls.allow_sans_pos}}) {
    if (only_for(name, !client, "server")) {
      *where = pos(name);
      if (!verifies_clients) {
        error(table.get(name)->source(), prefix + name,
              "needs client_ca (and verify_client other than none)");
      }
    }
  }
  if (!client) {
    if (const std::string* crl = string_at(table, "crl", prefix + "crl")) {
      if (crl->empty()) error(table.get("crl")->source(), prefix + "crl", "must not be empty");
      tls.crl = resolve_path(*crl);
    }
    strings_at(table, "allow_subjects", prefix + "allow_subjects", tls.allow_subjects);
    strings_at(table, "allow_sans", prefix + "allow_sans", tls.allow_sans);
  }

  if (only_for("session_tickets", !client, "server")) {
    bool_at(table, "session_tickets", prefix + "session_tickets", tls.session_tickets);
  }
  if (only_for("ticket_key_file", !client, "server")) {
    if (const std::string* f = string_at(table, "ticket_key_file", prefix + "ticket_key_file")) {
      tls.ticket_key_file_pos = pos("ticket_key_file");
      if (f->empty()) {
        error(table.get("ticket_key_file")->source(), prefix + "ticket_key_file",
              "must not be empty");
      } else if (!tls.session_tickets) {
        error(table.get("ticket_key_file")->source(), prefix + "ticket_key_file",
              "set, but session_tickets = false");
      }
      tls.ticket_key_file = resolve_path(*f);
    }
  }

  if (const toml::node* node = table.get("record_padding")) {
    tls.record_padding_pos = pos("record_padding");
    if (const auto* v = node->as_integer()) {
      if (v->get() < 0 || v->get() > kMaxRecordPadding) {
        error(node->source(), prefix + "record_padding",
              "must be between 0 and " + std::to_string(kMaxRecordPadding) + " (0 = off)");
      } else {
        tls.record_padding = static_cast<unsigned>(v->get());
      }
    } else {
      type_error(*node, prefix + "record_padding", "an integer");
    }
  }

  // ---- client mode only ----
  if (only_for("server_name", client, "client")) {
    if (const std::string* name = string_at(table, "server_name", prefix + "server_name")) {
      tls.server_name_pos = pos("server_name");
      if (name->empty()) {
        error(table.get("server_name")->source(), prefix + "server_name", "must not be empty");
      }
      tls.server_name = *name;
    }
  }
  if (client && tls.server_name.empty()) {
    // Default: the host of `connect`. Several upstreams must agree on it (or name it).
    const auto& backends = service.connect.backends;
    for (const Endpoint& e : backends) {
      if (e.is_unix() || e.tcp.host != backends.front().tcp.host) {
        error(table.get("connect")->source(), prefix + "server_name",
              e.is_unix() ? "missing: a unix: upstream has no host name to verify"
                          : "missing: the upstreams have different hosts; name the one to verify");
        break;
      }
    }
    if (!backends.empty() && !backends.front().is_unix()) {
      tls.server_name = backends.front().tcp.host;
    }
  }
  if (only_for("ca", client, "client")) {
    if (const std::string* ca = string_at(table, "ca", prefix + "ca")) {
      tls.ca_pos = pos("ca");
      if (ca->empty()) error(table.get("ca")->source(), prefix + "ca", "must not be empty");
      tls.ca = resolve_path(*ca);
    }
  }
  if (only_for("verify", client, "client")) {
    tls.verify_pos = pos("verify");
    bool_at(table, "verify", prefix + "verify", tls.verify);
  }
}

}  // namespace ferry::detail
