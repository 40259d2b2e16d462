# Creates the cluster's PKI with openssl (sourced by up.sh). Idempotent: existing files stay.
# cert NAME CN O SANS  — SANS like "DNS:x,IP:1.2.3.4" or "" for client certificates.
make_ca() {
  local dir=$1
  [[ -f $dir/ca.crt ]] && return
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$dir/ca.key" -subj "/CN=weft-e2e-ca" -days 3650 -out "$dir/ca.crt" 2>/dev/null
}
make_cert() {
  local dir=$1 name=$2 cn=$3 org=$4 sans=$5 usage=$6
  [[ -f $dir/$name.crt ]] && return
  openssl ecparam -name prime256v1 -genkey -noout -out "$dir/$name.key" 2>/dev/null
  local subj="/CN=$cn"; [[ -n $org ]] && subj="/O=$org$subj"
  local ext="$dir/$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n $sans ]] && echo "subjectAltName=$sans"
  } > "$ext"
  openssl req -new -key "$dir/$name.key" -subj "$subj" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$dir/$name.ext"
}
make_pki() {
  local dir=$1
  mkdir -p "$dir"; chmod 700 "$dir"
  make_ca "$dir"
  make_cert "$dir" apiserver kube-apiserver "" \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,IP:127.0.0.1" serverAuth
  make_cert "$dir" admin kubernetes-admin system:masters "" clientAuth
  make_cert "$dir" controller-manager system:kube-controller-manager "" "" clientAuth
  make_cert "$dir" scheduler system:kube-scheduler "" "" clientAuth
  make_cert "$dir" kube-proxy system:kube-proxy "" "" clientAuth
  make_cert "$dir" lb-controller weft-e2e:lb-controller "" "" clientAuth
  make_cert "$dir" node "system:node:$NODE_NAME" system:nodes "" clientAuth
  make_cert "$dir" kubelet-serving "system:node:$NODE_NAME" system:nodes "DNS:$NODE_NAME,IP:$NODE_IP" serverAuth
  make_cert "$dir" apiserver-kubelet-client kube-apiserver-kubelet-client system:masters "" clientAuth
  make_cert "$dir" etcd etcd "" "DNS:localhost,IP:127.0.0.1" "serverAuth,clientAuth"
  if [[ ! -f $dir/sa.key ]]; then
    openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
    openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  fi
}
# kubeconfig FILE NAME — a kubeconfig for the client certificate NAME.
make_kubeconfig() {
  local file=$1 name=$2 dir=$CLUSTER_DIR/pki
  cat > "$file" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: weft-e2e
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority: $dir/ca.crt
users:
- name: $name
  user:
    client-certificate: $dir/$name.crt
    client-key: $dir/$name.key
contexts:
- name: weft-e2e
  context: {cluster: weft-e2e, user: $name}
current-context: weft-e2e
KCFG
}
