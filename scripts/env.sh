# Source this for running tessera under mpirun on a workstation or container:
# Open MPI refuses root without these, and more ranks than cores need oversubscription.
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1
# Containers often lack a high-speed fabric: keep Open MPI quiet and on shared memory/TCP.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_btl="self,vader,tcp"
export OMPI_MCA_pml=ob1
