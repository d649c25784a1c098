# A single Vault server keeping its data on a volume, in integrated storage (raft:
# HashiCorp's recommended backend, and one OpenBao has too). Put TLS in front of it (or
# set tls_cert_file / tls_key_file here) before it leaves one host.
storage "raft" {
  path    = "/vault/file"
  node_id = "berth-vault"
}
listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"
  tls_disable     = true
}
api_addr      = "http://vault:8200"
cluster_addr  = "http://vault:8201"
disable_mlock = true
ui            = false
