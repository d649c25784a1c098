# A single Vault server keeping its data on a volume. Put TLS in front of it (or
# set tls_cert_file / tls_key_file here) before it leaves one host.
storage "file" {
  path = "/vault/file"
}
listener "tcp" {
  address     = "0.0.0.0:8200"
  tls_disable = true
}
disable_mlock = true
ui            = false
